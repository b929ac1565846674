{{/*
The chart name, or nameOverride.
*/}}
{{- define "kedge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: fullnameOverride, else the release name if it
contains the chart name, else "<release>-<chart>". At most 63 characters
less the longest suffix added to it ("-config"), because some Kubernetes
name fields are limited to that (by the DNS naming spec).
*/}}
{{- define "kedge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the chart label.
*/}}
{{- define "kedge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "kedge.labels" -}}
helm.sh/chart: {{ include "kedge.chart" . }}
{{ include "kedge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "kedge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kedge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The name of the service account to use.
*/}}
{{- define "kedge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kedge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the store URL, and its key.
*/}}
{{- define "kedge.storeSecretName" -}}
{{- if .Values.store.url }}
{{- if .Values.store.existingSecret }}
{{- fail "store: set either url (the chart creates the Secret) or existingSecret, not both" }}
{{- end }}
{{- printf "%s-store" (include "kedge.fullname" .) }}
{{- else }}
{{- default (printf "%s-store" (include "kedge.fullname" .)) .Values.store.existingSecret }}
{{- end }}
{{- end }}

{{- define "kedge.storeSecretKey" -}}
{{- if .Values.store.url }}url{{ else }}{{ .Values.store.existingSecretKey }}{{ end }}
{{- end }}

{{/*
The daemon config (kedge.yaml): .Values.config with the keys the chart owns
set to what the Deployment mounts, injects and probes.
*/}}
{{- define "kedge.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "jobs_dir" "/etc/kedge/jobs" }}
{{- $store := deepCopy (default (dict) $config.store) }}
{{- $_ := unset $store "url" }}
{{- $_ := set $store "url_env" "KEDGE_STORE_URL" }}
{{- $_ := set $config "store" $store }}
{{- $executor := deepCopy (default (dict) $config.executor) }}
{{- $kubernetes := default (dict) $executor.kubernetes }}
{{- if not $kubernetes.namespace }}
{{- $_ := set $kubernetes "namespace" .Release.Namespace }}
{{- end }}
{{- $_ := set $executor "kind" "kubernetes" }}
{{- $_ := set $executor "kubernetes" $kubernetes }}
{{- $_ := set $config "executor" $executor }}
{{- $_ := set $config "http" (dict "listen" (printf "0.0.0.0:%v" .Values.service.port)) }}
{{- toYaml $config }}
{{- end }}

{{/*
The job definitions: file name (".yaml" added when it has no YAML
extension) → the file's text (a definition given as a mapping is written
as YAML).
*/}}
{{- define "kedge.jobFiles" -}}
{{- $files := dict }}
{{- range $name, $definition := .Values.jobs.definitions }}
{{- $file := ternary $name (printf "%s.yaml" $name) (or (hasSuffix ".yaml" $name) (hasSuffix ".yml" $name)) }}
{{- $_ := set $files $file (ternary $definition (toYaml $definition) (kindIs "string" $definition)) }}
{{- end }}
{{- toYaml $files }}
{{- end }}
