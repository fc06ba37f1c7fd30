{{/* Names, labels and the choices several templates share. */}}

{{- define "mxlimit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mxlimit.fullname" -}}
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

{{- define "mxlimit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mxlimit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: limiter, agent, redis. */}}
{{- define "mxlimit.selector" -}}
app.kubernetes.io/name: {{ include "mxlimit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mxlimit.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The Redis URLs the limiter uses, comma-separated; empty for the in-memory store. */}}
{{- define "mxlimit.redisUrls" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- printf "redis://%s-redis:6379" (include "mxlimit.fullname" .) }}
{{- else -}}
{{- join "," .Values.redis.external.urls }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the Redis password; empty when there is none. */}}
{{- define "mxlimit.redisSecret" -}}
{{- if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret }}
{{- else if .Values.redis.external.password -}}
{{- printf "%s-redis-auth" (include "mxlimit.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mxlimit.redisSecretKey" -}}
{{- if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecretKey }}
{{- else -}}
redis-password
{{- end }}
{{- end }}

{{- define "mxlimit.replicas" -}}
{{- $redis := include "mxlimit.redisUrls" . -}}
{{- $n := .Values.limiter.replicas -}}
{{- if kindIs "invalid" $n -}}
{{- $n = ternary 2 1 (ne $redis "") -}}
{{- end -}}
{{- if and (eq $redis "") (or (gt (int $n) 1) .Values.autoscaling.enabled) -}}
{{- fail "limiter.replicas > 1 or autoscaling needs Redis (redis.external.urls or redis.bundled.enabled): with the in-memory store each pod would count alone" -}}
{{- end -}}
{{- $n -}}
{{- end }}

{{- define "mxlimit.configMapName" -}}
{{- default (printf "%s-rules" (include "mxlimit.fullname" .)) .Values.rules.existingConfigMap }}
{{- end }}

{{/* The Secret with the limiter's certificate and key. */}}
{{- define "mxlimit.tlsSecret" -}}
{{- default (printf "%s-tls" (include "mxlimit.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* The Secret and key with the CA of client certificates (mutual TLS). */}}
{{- define "mxlimit.clientCASecret" -}}
{{- if .Values.tls.clientCA.pem -}}
{{- printf "%s-tls" (include "mxlimit.fullname" .) }}
{{- else -}}
{{- default (include "mxlimit.tlsSecret" .) .Values.tls.clientCA.existingSecret }}
{{- end }}
{{- end }}

{{- define "mxlimit.clientCAKey" -}}
{{- ternary "ca.crt" .Values.tls.clientCA.key (ne .Values.tls.clientCA.pem "") }}
{{- end }}

{{/* The port the probes and helm test ask: the plaintext health port under TLS. */}}
{{- define "mxlimit.healthPort" -}}
{{- ternary .Values.tls.healthPort .Values.limiter.port .Values.tls.enabled }}
{{- end }}

{{/* The Secret and key with the admin tokens; empty when there are none. */}}
{{- define "mxlimit.adminSecret" -}}
{{- if .Values.admin.existingSecret -}}
{{- .Values.admin.existingSecret }}
{{- else if .Values.admin.token -}}
{{- printf "%s-admin" (include "mxlimit.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mxlimit.adminSecretKey" -}}
{{- ternary .Values.admin.existingSecretKey "token" (ne .Values.admin.existingSecret "") }}
{{- end }}
