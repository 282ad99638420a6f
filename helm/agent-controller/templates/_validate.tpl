{{/*
Checks values.schema.json already makes (kept for --skip-schema-validation), with the reason.
*/}}
{{- define "agent-controller.validate" -}}
{{- $p := .Values.archive.persistence }}
{{- if and (gt (int .Values.replicas) 1) $p.enabled (not $p.existingClaim) (or (has "ReadWriteOnce" $p.accessModes) (has "ReadWriteOncePod" $p.accessModes)) }}
{{- fail "replicas > 1 needs an archive claim every replica can mount: set archive.persistence.accessModes to [ReadWriteMany] (or use archive.persistence.existingClaim)" }}
{{- end }}
{{- if lt (int .Values.sweepInterval) 1 }}
{{- fail "sweepInterval must be a positive number of seconds" }}
{{- end }}
{{- end }}
