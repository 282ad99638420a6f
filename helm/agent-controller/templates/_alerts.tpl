{{/*
The alert rules: the one source of the PrometheusRule (templates/prometheusrule.yaml) and of the
plain Prometheus rules file deploy/prometheus/agent-controller-rules.yaml, which
scripts/generate-manifests.sh renders from this template (a test fails when it is stale).
Prometheus' own template syntax is escaped from Helm as {{`{{ ... }}`}}.
*/}}
{{- define "agent-controller.alertGroups" -}}
{{- $job := include "agent-controller.metricsJob" . }}
{{- $ns := .Release.Namespace }}
{{- $deploy := include "agent-controller.fullname" . }}
{{- $interval := int .Values.sweepInterval }}
{{- $extra := .Values.prometheusRule.additionalAlertLabels -}}
groups:
  - name: agent-controller
    rules:
      - alert: AgentControllerLeakedResources
        expr: agent_controller_leaked_resources{job="{{ $job }}"} > 0
        for: 10m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "{{`{{ $value }}`}} leaked agent {{`{{ $labels.kind }}`}} object(s), reason {{`{{ $labels.reason }}`}}, for 10 minutes"
          description: >-
            The agent-controller sweep has found {{`{{ $value }}`}} {{`{{ $labels.kind }}`}} object(s) of finished or
            vanished agents (reason {{`{{ $labels.reason }}`}}) for at least 10 minutes: they hold cluster resources
            or credentials and are not going away. List them with
            `kubectl get pods,configmaps,serviceaccounts,roles,rolebindings -A -l app.kubernetes.io/managed-by=agent-controller`.
            reason=archive_failed: the pod is kept because its logs could not be archived; check that the
            archive volume is mounted, writable and not full (`kubectl -n {{ $ns }} logs deploy/{{ $deploy }}`)
            and read the Agent's `.status.cleanup.errors`; the pod goes as soon as archiving succeeds.
            reason=orphaned or terminal: the sweep could not delete them; look in the controller logs for
            the failing API calls (RBAC denials, admission webhooks, finalizers on the objects).
      - alert: AgentControllerCleanupsFailing
        expr: sum by (job, trigger) (rate(agent_controller_cleanups_total{job="{{ $job }}", result="failure"}[5m])) > 0
        for: 15m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "agent-controller cleanups triggered by {{`{{ $labels.trigger }}`}} keep failing"
          description: >-
            Cleanups of agents ended by {{`{{ $labels.trigger }}`}} have been failing for 15 minutes
            ({{`{{ $value | humanize }}`}} failures/s). The controller retries them with backoff, and the pods,
            prompts and credentials of those agents stay until a retry succeeds. Find the agents with
            `kubectl get agents -A` (column Cleanup is Retrying), read the cause in
            `kubectl get agent NAME -n NAMESPACE -o jsonpath='{.status.cleanup.errors}'` and in
            `kubectl -n {{ $ns }} logs deploy/{{ $deploy }}`. Usual causes: the archive volume is full or
            read-only, API errors or missing RBAC, pods stuck terminating on a lost node.
      - alert: AgentControllerSweepNotSucceeding
        expr: time() - max by (job) (agent_controller_last_sweep_success_timestamp_seconds{job="{{ $job }}"}) > {{ mul 3 $interval }}
        for: 2m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "No agent-controller sweep has succeeded for 3 sweep intervals"
          description: >-
            The last successful sweep was {{`{{ $value | humanizeDuration }}`}} ago, more than 3 sweep
            intervals (3 x {{ $interval }}s). Leaked pods, prompts and credentials are neither found nor
            reaped meanwhile, and the controller's /healthz fails, so Kubernetes restarts it. Read the
            sweep errors in `kubectl -n {{ $ns }} logs deploy/{{ $deploy }}` (API timeouts, RBAC denials on
            list, the archive volume for orphaned pods) and check the restart count in
            `kubectl -n {{ $ns }} get pods -l app.kubernetes.io/name=agent-controller`.
      - alert: AgentControllerDown
        expr: absent(up{job="{{ $job }}"} == 1)
        for: 5m
        labels:
          severity: critical
          job: {{ $job | quote }}
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "agent-controller is down or its metrics are not scraped"
          description: >-
            Prometheus has had no successful scrape of job {{ $job }} for 5 minutes. While the controller
            is down nothing is cleaned up: finished agents keep their pods, prompts and credentials, and
            deleted Agents hang on their finalizer. Check
            `kubectl -n {{ $ns }} get pods -l app.kubernetes.io/name=agent-controller` (CrashLoopBackOff,
            Pending on the archive claim, image pull errors) and
            `kubectl -n {{ $ns }} logs deploy/{{ $deploy }} --previous`. If the pods run, check the scrape
            configuration (ServiceMonitor, Service {{ $deploy }} port `metrics`).
{{- end }}
