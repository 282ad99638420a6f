{{/*
The alert rules: the one source of the PrometheusRule (templates/prometheusrule.yaml) and of the
plain Prometheus rules file deploy/prometheus/agent-controller-rules.yaml, which
scripts/generate-manifests.sh renders from this template (a test fails when it is stale).
Prometheus' own template syntax is escaped from Helm as {{`{{ ... }}`}}.

Every alert is about a state that needs a person, not a rate: leaked objects that stay, a cleanup
that keeps failing, no successful sweep, the controller gone, logs archived incomplete. Values are
rendered as counts and durations ("2 Agent cleanups failing, the oldest for 12m 30s").
*/}}

{{/* Seconds as a Prometheus duration that reads well: 3600 -> 1h, 600 -> 10m, 45 -> 45s. */}}
{{- define "agent-controller.duration" -}}
{{- $s := int . -}}
{{- if and (gt $s 0) (eq (mod $s 3600) 0) -}}
{{ div $s 3600 }}h
{{- else if and (gt $s 0) (eq (mod $s 60) 0) -}}
{{ div $s 60 }}m
{{- else -}}
{{ $s }}s
{{- end -}}
{{- end }}

{{- define "agent-controller.alertGroups" -}}
{{- $job := include "agent-controller.metricsJob" . }}
{{- $ns := .Release.Namespace }}
{{- $deploy := include "agent-controller.fullname" . }}
{{- $interval := int .Values.sweepInterval }}
{{- $alerts := .Values.prometheusRule.alerts }}
{{- $leakedFor := include "agent-controller.duration" $alerts.leakedForSeconds }}
{{- $stuck := int $alerts.cleanupStuckSeconds }}
{{- $stuckFor := include "agent-controller.duration" $stuck }}
{{- $downFor := include "agent-controller.duration" $alerts.downForSeconds }}
{{- $window := include "agent-controller.duration" $alerts.incompleteLogsWindowSeconds }}
{{- $extra := .Values.prometheusRule.additionalAlertLabels -}}
groups:
  - name: agent-controller
    rules:
      - alert: AgentControllerLeakedResources
        expr: agent_controller_leaked_resources{job="{{ $job }}"} > 0
        for: {{ $leakedFor }}
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "{{`{{ $value }}`}} leaked agent {{`{{ $labels.kind }}`}} object(s), reason {{`{{ $labels.reason }}`}}, for more than {{ $leakedFor }}"
          description: >-
            The agent-controller sweep has found {{`{{ $value }}`}} {{`{{ $labels.kind }}`}} object(s) of finished or
            vanished agents (reason {{`{{ $labels.reason }}`}}) for more than {{ $leakedFor }}: they hold cluster resources
            or credentials and are not going away. List them with
            `kubectl get pods,configmaps,serviceaccounts,roles,rolebindings -A -l app.kubernetes.io/managed-by=agent-controller`.
            reason=archive_failed: the pod is kept because its logs could not be archived; check that the
            archive volume is mounted, writable and not full (`kubectl -n {{ $ns }} logs deploy/{{ $deploy }}`)
            and read the Agent's `.status.cleanup.errors`; the pod goes as soon as archiving succeeds.
            reason=orphaned or terminal: the sweep could not delete them; read the ReapFailed Events
            (`kubectl get events -A --field-selector reason=ReapFailed`) and the controller logs for the
            failing API calls (RBAC denials, admission webhooks, finalizers on the objects).
      - alert: AgentControllerCleanupsStuck
        expr: max by (job) (agent_controller_cleanup_retrying_longest_seconds{job="{{ $job }}"}) > {{ $stuck }}
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            {{`{{ with printf "max(agent_controller_cleanups_retrying{job=%q})" $labels.job | query }}{{ . | first | value }}{{ else }}Some{{ end }}`}}
            Agent cleanup(s) failing, the oldest for {{`{{ $value | humanizeDuration }}`}}
          description: >-
            The cleanup of at least one finished Agent has kept failing for {{`{{ $value | humanizeDuration }}`}}
            (more than {{ $stuckFor }}). The controller retries it with backoff (at most every 5 minutes), and
            the agent's pod, prompt and credentials stay until a retry succeeds. Find the Agents with
            `kubectl get agents -A` (column CLEANUP is Retrying) and read why with
            `kubectl describe agent NAME -n NAMESPACE` (Event CleanupRetrying) or
            `kubectl get agent NAME -n NAMESPACE -o jsonpath='{.status.cleanup.errors}'`, and in
            `kubectl -n {{ $ns }} logs deploy/{{ $deploy }}`. Usual causes: the archive volume is full or
            read-only (the pod is kept until its logs are archived), API errors or missing RBAC, pods stuck
            terminating on a lost node.
      - alert: AgentControllerSweepNotSucceeding
        expr: time() - max by (job) (agent_controller_last_sweep_success_timestamp_seconds{job="{{ $job }}"}) > {{ mul 3 $interval }}
        for: {{ include "agent-controller.duration" (mul 2 $interval) }}
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "No agent-controller sweep has succeeded for {{`{{ $value | humanizeDuration }}`}} (more than 3 sweep intervals of {{ include "agent-controller.duration" $interval }})"
          description: >-
            The last successful sweep was {{`{{ $value | humanizeDuration }}`}} ago, more than 3 sweep
            intervals (3 x {{ $interval }}s). Leaked pods, prompts and credentials are neither found nor
            reaped meanwhile, and the controller's /healthz fails, so Kubernetes restarts it. Read the
            sweep errors in `kubectl -n {{ $ns }} logs deploy/{{ $deploy }}` (API timeouts, RBAC denials on
            list, the archive volume for orphaned pods) and check the restart count in
            `kubectl -n {{ $ns }} get pods -l app.kubernetes.io/name=agent-controller`.
      - alert: AgentControllerDown
        expr: absent(up{job="{{ $job }}"} == 1)
        for: {{ $downFor }}
        labels:
          severity: critical
          job: {{ $job | quote }}
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "agent-controller is down or its metrics are not scraped, for more than {{ $downFor }}"
          description: >-
            Prometheus has had no successful scrape of job {{ $job }} for more than {{ $downFor }}. While the
            controller is down nothing is cleaned up: finished agents keep their pods, prompts and
            credentials, and deleted Agents hang on their finalizer. Check
            `kubectl -n {{ $ns }} get pods -l app.kubernetes.io/name=agent-controller` (CrashLoopBackOff,
            Pending on the archive claim, image pull errors) and
            `kubectl -n {{ $ns }} logs deploy/{{ $deploy }} --previous`. If the pods run, check the scrape
            configuration (ServiceMonitor, Service {{ $deploy }} port `metrics`).
      - alert: AgentControllerIncompleteLogs
        expr: >-
          sum by (job, reason) (agent_controller_incomplete_logs_total{job="{{ $job }}"}
          - min_over_time(agent_controller_incomplete_logs_total{job="{{ $job }}"}[{{ $window }}])) > 0
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "{{`{{ $value }}`}} agent log(s) archived incomplete in the last {{ $window }}, reason {{`{{ $labels.reason }}`}}"
          description: >-
            In the last {{ $window }}, {{`{{ $value }}`}} container log(s) were archived without every byte the
            container wrote (reason {{`{{ $labels.reason }}`}}). rotated: the kubelet rotated the log before it
            was read (the agent wrote more than the node's containerLogMaxSize; an agent whose entrypoint is
            `agentctl run` ships every byte itself); stream_broken: the log stream broke and could not be
            resumed; kubelet_unreachable, pod_gone, container_gone: the node could not serve the log within
            the Agent's cleanup.logTimeoutSeconds. Each such entry of the archive's MANIFEST.json has
            `complete: false`, `missing` and, when known, `missingBytes`. Find the Agents with
            `kubectl get agents -A -o custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,COMPLETE:.status.cleanup.logsComplete`
            and the Warning Events of their cleanup (`kubectl describe agent NAME -n NAMESPACE`).
{{- end }}
