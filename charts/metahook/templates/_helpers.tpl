{{/* The chart's name, overridable with nameOverride. */}}
{{- define "metahook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name when it already contains the chart's name,
else "<release>-<chart>"; at most 63 characters (a DNS label).
*/}}
{{- define "metahook.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "metahook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "metahook.commonLabels" -}}
helm.sh/chart: {{ include "metahook.chart" . }}
app.kubernetes.io/name: {{ include "metahook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: metahook
{{- end }}

{{/* Labels on the operator's objects (all but the alert rules and dashboards). */}}
{{- define "metahook.labels" -}}
{{ include "metahook.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator pods' labels, and the selector of its Deployment and Service. */}}
{{- define "metahook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metahook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's service account. */}}
{{- define "metahook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "metahook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: (dict "root" $ "image" .Values.operator.image) ->
"[registry/]repository:tag", the tag defaulting to the chart's appVersion.
*/}}
{{- define "metahook.image" -}}
{{- $registry := .root.Values.image.registry | trimSuffix "/" }}
{{- $tag := .image.tag | default .root.Chart.AppVersion }}
{{- if $registry }}
{{- printf "%s/%s:%s" $registry .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The name of the leader Lease: one per release, so two releases never share one. */}}
{{- define "metahook.leaseName" -}}
{{- include "metahook.fullname" . }}
{{- end }}

{{/*
The operator's rules on namespaced resources, where its WebhookSubscriptions live: exactly
docs/operator.md's permissions table (tests/tests/chart.rs compares them). Leases are apart
(the release namespace only), and API discovery (/apis) needs no rule: the default
system:discovery ClusterRoleBinding grants it to every authenticated account.
*/}}
{{- define "metahook.namespacedRules" -}}
- apiGroups: ["metahook.io"]
  resources: ["webhooksubscriptions"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["metahook.io"]
  resources: ["webhooksubscriptions/status"]
  verbs: ["get", "patch"]
- apiGroups: ["metahook.io"]
  resources: ["webhookreplays"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["metahook.io"]
  resources: ["webhookreplays/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "create", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
