"""OpenAI's Responses API (`/v1/responses`): Codex CLI's only door, and the OpenAI SDKs' newest."""
