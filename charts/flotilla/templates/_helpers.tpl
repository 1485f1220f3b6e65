{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "flotilla.fullname" -}}
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

{{- define "flotilla.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flotilla.labels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
{{ include "flotilla.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flotilla.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The gateway's config file. Only keys the binary knows are written (it rejects
unknown ones); bindAddress and port are flags. publicUrl defaults to the first
ingress host when the Ingress is enabled.
*/}}
{{- define "flotilla.config" -}}
{{- $c := .Values.config }}
{{- $out := dict }}
{{- $publicUrl := $c.publicUrl }}
{{- if and (not $publicUrl) .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $scheme := ternary "https" "http" (gt (len .Values.ingress.tls) 0) }}
{{- $publicUrl = printf "%s://%s" $scheme $host }}
{{- end }}
{{- if $publicUrl }}
{{- $_ := set $out "publicUrl" $publicUrl }}
{{- end }}
{{- if $c.allowedHosts }}
{{- $_ := set $out "allowedHosts" $c.allowedHosts }}
{{- end }}
{{- $_ := set $out "pingIntervalSeconds" $c.pingIntervalSeconds }}
{{- $_ := set $out "fanOut" (dict "maxConcurrency" $c.fanOut.maxConcurrency "outputBudgetBytes" $c.fanOut.outputBudgetBytes "allowDestructive" $c.fanOut.allowDestructive) }}
{{- $a := .Values.auth }}
{{- if $a.enabled }}
{{- $auth := dict "oidc" (dict "issuer" $a.oidc.issuer "clientId" $a.oidc.clientId "clientSecretFile" "/etc/flotilla-auth/oidc-client-secret") "sealingKeyFile" "/etc/flotilla-auth/sealing-keys" }}
{{- if $a.trustedIssuers }}
{{- $_ := set $auth "trustedIssuers" $a.trustedIssuers }}
{{- end }}
{{- if $a.tokenCache }}
{{- $_ := set $auth "tokenCache" $a.tokenCache }}
{{- end }}
{{- if $a.userSessions }}
{{- $_ := set $auth "userSessions" $a.userSessions }}
{{- end }}
{{- $_ := set $out "auth" $auth }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The rules for MCPServers and Events, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "flotilla.mcpserverRules" -}}
- apiGroups: ["flotilla.dev"]
  resources: ["mcpservers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["flotilla.dev"]
  resources: ["mcpservers/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
