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
{{- if $c.limits }}
{{- $limits := dict }}
{{- range $key, $value := $c.limits }}
{{- $_ := set $limits $key ($value | int) }}
{{- end }}
{{- $_ := set $out "limits" $limits }}
{{- end }}
{{- if $c.rateLimit }}
{{- $rate := dict }}
{{- range $key, $value := $c.rateLimit }}
{{- $_ := set $rate $key ($value | int) }}
{{- end }}
{{- $_ := set $out "rateLimit" $rate }}
{{- end }}
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
{{- else }}
{{- $_ := set $out "sealingKeyFile" "/etc/flotilla-keys/sealing-keys" }}
{{- end }}
{{- $_ := set $out "replicaPeers" (dict "dnsName" (printf "%s-peers.%s.svc" (include "flotilla.fullname" .) .Release.Namespace)) }}
{{- $t := .Values.tracing }}
{{- if $t.otlpEndpoint }}
{{- $_ := set $out "tracing" (dict "otlpEndpoint" $t.otlpEndpoint "serviceName" $t.serviceName "sampleRatio" ($t.sampleRatio | float64)) }}
{{- end }}
{{- $au := .Values.audit }}
{{- $audit := dict "enabled" $au.enabled "includeArguments" $au.includeArguments }}
{{- if $au.file }}
{{- $_ := set $audit "file" $au.file }}
{{- $_ := set $audit "maxFileMib" ($au.maxFileMib | int) }}
{{- $_ := set $audit "maxFiles" ($au.maxFiles | int) }}
{{- end }}
{{- $_ := set $out "audit" $audit }}
{{- toYaml $out }}
{{- end }}

{{/*
The directory of audit.file, mounted writable (the root filesystem is
read-only). A volume there hides what the image or the chart put there, so
the chart's own mounts (/tmp, /etc/flotilla, /etc/flotilla-auth) and the
system trees (/etc holds the CA certificates, /usr the binary) are refused.
*/}}
{{- define "flotilla.auditDir" -}}
{{- $dir := dir .Values.audit.file }}
{{- $refused := has $dir (list "/" "/tmp") }}
{{- range list "/etc" "/usr" "/bin" "/sbin" "/lib" "/lib64" "/proc" "/sys" "/dev" }}
{{- if or (eq $dir .) (hasPrefix (printf "%s/" .) $dir) }}
{{- $refused = true }}
{{- end }}
{{- end }}
{{- if $refused }}
{{- fail (printf "audit.file %q: its directory %s cannot be the audit volume (it would hide the chart's mounts or the image's files); use a directory of its own, e.g. /var/log/flotilla/audit.log" .Values.audit.file $dir) }}
{{- end }}
{{- $dir }}
{{- end }}

{{/*
The pod's annotations: the Prometheus scrape hints (metrics.annotations),
overridden key by key by podAnnotations, and the config checksum.
*/}}
{{- define "flotilla.podAnnotations" -}}
{{- $ann := dict }}
{{- if .Values.metrics.annotations.enabled }}
{{- $_ := set $ann "prometheus.io/scrape" "true" }}
{{- $_ := set $ann "prometheus.io/port" (toString .Values.port) }}
{{- $_ := set $ann "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $ann = mergeOverwrite $ann (deepCopy (.Values.podAnnotations | default dict)) }}
{{- $_ := set $ann "checksum/config" (include "flotilla.config" . | sha256sum) }}
{{- toYaml $ann }}
{{- end }}

{{/* The rules for MCPServers, MCPServerSets, ToolPolicies and Events, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "flotilla.mcpserverRules" -}}
- apiGroups: ["flotilla.dev"]
  resources: ["mcpservers", "mcpserversets", "toolpolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["flotilla.dev"]
  resources: ["mcpservers/status", "mcpserversets/status", "toolpolicies/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
The Secret holding the key that seals client session ids (without auth):
the configured one, else the chart's own.
*/}}
{{- define "flotilla.sealingKeysSecret" -}}
{{- default (printf "%s-sealing-keys" (include "flotilla.fullname" .)) .Values.sessions.sealingKeysSecret -}}
{{- end }}
