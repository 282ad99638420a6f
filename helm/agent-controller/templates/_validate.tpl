{{/*
Checks of values that values.schema.json cannot explain well (and kept for --skip-schema-validation).
*/}}
{{- define "agent-controller.validate" -}}
{{- $p := .Values.archive.persistence }}
{{- if and (gt (int .Values.replicas) 1) $p.enabled (not $p.existingClaim) (or (has "ReadWriteOnce" $p.accessModes) (has "ReadWriteOncePod" $p.accessModes)) }}
{{- fail (printf "replicas=%d: more than one replica is supported (the replicas elect a leader through a Lease, --leader-election), but every replica mounts the archive volume, and the chart's claim is %s. Also set archive.persistence.accessModes={ReadWriteMany} (a storage class that supports it: NFS, EFS, Azure Files, CephFS, ...; add archive.persistence.storageClass=<class>), or archive.persistence.existingClaim=<a ReadWriteMany claim>" (int .Values.replicas) (join "," $p.accessModes)) }}
{{- end }}
{{- if lt (int .Values.sweepInterval) 1 }}
{{- fail "sweepInterval must be a positive number of seconds" }}
{{- end }}
{{- if not (has .Values.podSecurity (list "restricted" "baseline" "privileged")) }}
{{- fail (printf "podSecurity must be restricted, baseline or privileged, not %q" (toString .Values.podSecurity)) }}
{{- end }}
{{- end }}
