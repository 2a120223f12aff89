{{/* The chart's name, or nameOverride. */}}
{{- define "tenantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of every object of the release: fullnameOverride, or release and chart names. */}}
{{- define "tenantry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tenantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable for the life of a release (a Deployment's selector is immutable). */}}
{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The recommended labels, on every object of the chart. */}}
{{- define "tenantry.labels" -}}
helm.sh/chart: {{ include "tenantry.chart" . }}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: tenantry
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tenantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tenantry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Kubernetes user name of the operator's ServiceAccount, as RBAC and admission see it. */}}
{{- define "tenantry.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "tenantry.serviceAccountName" . }}
{{- end -}}

{{- define "tenantry.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}


{{/* The ClusterRole the operator binds to itself in each tenant namespace (Secrets there). */}}
{{- define "tenantry.secretsRole" -}}
{{ include "tenantry.fullname" . }}-tenant-secrets
{{- end }}

{{/*
Where the operator may connect to reach the API server, as a JSON list: networkPolicy.apiServer.cidrs,
or, when that is empty, the private ranges (where the API server's endpoints are on most clusters),
which leave out the internet and the link-local metadata service.
*/}}
{{- define "tenantry.privateCIDRs" -}}
["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
{{- end -}}

{{- define "tenantry.apiServerCIDRs" -}}
{{- if .Values.networkPolicy.apiServer.cidrs -}}
{{- toJson .Values.networkPolicy.apiServer.cidrs -}}
{{- else -}}
{{- include "tenantry.privateCIDRs" . -}}
{{- end -}}
{{- end -}}

{{/*
The API group of an apiVersion: "" for "v1", "monitoring.coreos.com" for "monitoring.coreos.com/v1".
*/}}
{{- define "tenantry.apiGroup" -}}
{{- if contains "/" . }}{{ index (splitList "/" .) 0 }}{{ end -}}
{{- end }}

{{/*
Refuse a templates.kinds entry whose resource the operator must never be granted through it:
Tenantry's own kinds (it renders them itself; the grant would be cluster-wide) and what could
open a tenant's policies or bindings. The operator refuses these kinds too, but the grant would
be made before it says so.
*/}}
{{- define "tenantry.templateKindAllowed" -}}
{{- $never := list "namespaces" "secrets" "configmaps" "services" "serviceaccounts" "resourcequotas" "limitranges" "deployments" "roles" "rolebindings" "clusterroles" "clusterrolebindings" "networkpolicies" "adminnetworkpolicies" "baselineadminnetworkpolicies" -}}
{{- if or (has .resource $never) (hasSuffix "networkpolicies" .resource) -}}
{{- fail (printf "templates.kinds: %s/%s (resource %s) may never be rendered by templates: Tenantry renders it itself, or it could open what a tenant's policies and bindings close" .apiVersion .kind .resource) -}}
{{- end -}}
{{- end }}
