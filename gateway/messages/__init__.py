"""Anthropic's Messages API (`/v1/messages`): Claude Code's and the Anthropic SDKs' door."""
