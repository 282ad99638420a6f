{{/* Chart name. */}}
{{- define "agent-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name if it already contains the chart name. */}}
{{- define "agent-controller.fullname" -}}
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

{{- define "agent-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. The controller's own objects are managed by Helm: they must never carry
app.kubernetes.io/managed-by: agent-controller, the label of the objects the sweep reaps.
*/}}
{{- define "agent-controller.labels" -}}
helm.sh/chart: {{ include "agent-controller.chart" . }}
{{ include "agent-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-controller
{{- end }}

{{- define "agent-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agent-controller.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Name of the archive claim: the existing one, or the one the chart creates. */}}
{{- define "agent-controller.archiveClaimName" -}}
{{- if .Values.archive.persistence.existingClaim }}
{{- .Values.archive.persistence.existingClaim }}
{{- else }}
{{- printf "%s-archive" (include "agent-controller.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* "true" when the replicas elect a leader (more than one replica), else "". */}}
{{- define "agent-controller.leaderElection" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/*
Name of the leader-election Lease (in the release namespace): leaderElection.leaseName, else the
deprecated peering.name (values of chart versions that used kopf peering), else the full name.
*/}}
{{- define "agent-controller.leaseName" -}}
{{- .Values.leaderElection.leaseName | default .Values.peering.name | default (include "agent-controller.fullname" .) }}
{{- end }}

{{/* The `job` label Prometheus gives the controller's metrics: the Service name, unless set. */}}
{{- define "agent-controller.metricsJob" -}}
{{- default (include "agent-controller.fullname" .) .Values.prometheusRule.job }}
{{- end }}
