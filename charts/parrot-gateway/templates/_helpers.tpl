{{/* Chart name, truncated to a DNS label. */}}
{{- define "parrot-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "parrot-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "parrot-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object. */}}
{{- define "parrot-gateway.labels" -}}
helm.sh/chart: {{ include "parrot-gateway.chart" . }}
app.kubernetes.io/name: {{ include "parrot-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parrot-gateway
{{- end }}

{{/* Selector labels; pass a dict with "ctx" (root) and "component". */}}
{{- define "parrot-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parrot-gateway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "parrot-gateway.componentLabels" -}}
{{ include "parrot-gateway.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "parrot-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "parrot-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "parrot-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "parrot-gateway.redisName" -}}
{{- printf "%s-redis" (include "parrot-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "parrot-gateway.sglangName" -}}
{{- printf "%s-sglang" (include "parrot-gateway.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "parrot-gateway.apiKeysSecretName" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else }}
{{- printf "%s-api-keys" (include "parrot-gateway.fullname" .) }}
{{- end }}
{{- end }}

{{- define "parrot-gateway.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}true{{ end }}
{{- end }}

{{/* Settings fields the chart sets itself; they may not appear under gateway.* */}}
{{- define "parrot-gateway.managedSettings" -}}
host backend redis api_keys config
{{- end }}

{{/* The gateway settings file (YAML); validates gateway.* first. */}}
{{- define "parrot-gateway.settingsFile" -}}
{{- if hasKey .Values.gateway "ui_secret" }}
{{- fail "gateway.ui_secret would land in a ConfigMap: leave it unset (replicas share a generated key through Redis) or pass PARROT_UI_SECRET from a Secret via extraEnv" }}
{{- end }}
{{- range $k := splitList " " (include "parrot-gateway.managedSettings" .) }}
{{- if hasKey $.Values.gateway $k }}
{{- fail (printf "gateway.%s is set by the chart (see redis.*, sglang.*, engines.external, apiKeys.*); remove it from gateway.*" $k) }}
{{- end }}
{{- end }}
{{- toYaml .Values.gateway }}
{{- end }}

{{/* Engine base URLs: in-chart SGLang pod DNS names, then engines.external. */}}
{{- define "parrot-gateway.backends" -}}
{{- $urls := list }}
{{- if .Values.sglang.enabled }}
{{- $sts := include "parrot-gateway.sglangName" . }}
{{- range $i := until (int .Values.sglang.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.%s:%d" $sts $i $sts $.Release.Namespace $.Values.clusterDomain (int $.Values.sglang.port)) }}
{{- end }}
{{- end }}
{{- range .Values.engines.external }}
{{- $urls = append $urls (toString .) }}
{{- end }}
{{- if not $urls }}
{{- fail "no engines: enable sglang.enabled (with sglang.replicas >= 1) or list engines.external; the chart never starts simulated engines" }}
{{- end }}
{{- join " " $urls }}
{{- end }}

{{/* PARROT_REDIS value; $(REDIS_PASSWORD) is expanded by the kubelet from the env var defined before it. */}}
{{- define "parrot-gateway.redisUrl" -}}
{{- if and .Values.redis.enabled .Values.redis.external.url }}
{{- fail "set either redis.enabled or redis.external.url, not both" }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "parrot-gateway.redisName" .) }}
{{- else if .Values.redis.external.url }}
{{- $url := .Values.redis.external.url }}
{{- if .Values.redis.external.existingSecret }}
{{- $u := urlParse $url }}
{{- if not (and $u.scheme $u.host) }}
{{- fail (printf "redis.external.url %q is not a redis://host:port/db URL" $url) }}
{{- end }}
{{- $user := .Values.redis.external.username | default "" }}
{{- if and (not $user) $u.userinfo }}
{{- $user = first (splitList ":" $u.userinfo) }}
{{- end }}
{{- $query := "" }}
{{- if $u.query }}{{ $query = printf "?%s" $u.query }}{{ end }}
{{- printf "%s://%s:$(REDIS_PASSWORD)@%s%s%s" $u.scheme $user $u.host $u.path $query }}
{{- else }}
{{- $url }}
{{- end }}
{{- else }}
{{- fail "no Redis: set redis.enabled=true or redis.external.url; the chart never starts an embedded Redis" }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + ceil(drain) + slack, always > drain_timeout_s. */}}
{{- define "parrot-gateway.terminationGrace" -}}
{{- $drain := 30 }}
{{- if hasKey .Values.gateway "drain_timeout_s" }}
{{- $drain = int (ceil .Values.gateway.drain_timeout_s) }}
{{- end }}
{{- add $drain (int .Values.preStopSleepSeconds) (max 1 (int .Values.terminationGraceExtraSeconds)) }}
{{- end }}

{{/* Engine resources with nvidia.com/gpu defaulting to tensorParallelSize. */}}
{{- define "parrot-gateway.sglangResources" -}}
{{- $res := deepCopy (default dict .Values.sglang.resources) }}
{{- $tp := int .Values.sglang.tensorParallelSize }}
{{- range $part := list "limits" "requests" }}
{{- $m := default dict (get $res $part) }}
{{- if not (hasKey $m "nvidia.com/gpu") }}
{{- $_ := set $m "nvidia.com/gpu" $tp }}
{{- end }}
{{- $_ := set $res $part $m }}
{{- end }}
{{- toYaml $res }}
{{- end }}
