{{/*
The controller's permissions: the one list used by the ClusterRole (all namespaces) and by the
Roles (watchNamespaces), so the two cannot drift. Exactly what the controller calls, nothing more:

- agents: kopf watches them, patches finalizers/annotations, deletes them (ttlSecondsAfterFinished);
- agents/status: the reconcile loop's writes;
- pods (+ pods/log for the archive), the prompt ConfigMaps, and the agent's own credentials
  (ServiceAccount, Role, RoleBinding). The Roles it creates grant `get` on agents and
  `get`/`patch` on agents/status, which the controller holds itself, so neither `escalate` nor
  `bind` is needed;
- events, in both APIs.
API discovery needs no rule (system:discovery allows it to every authenticated user).
*/}}
{{- define "agent-controller.rbacRules" -}}
- apiGroups: ["agentcontroller.dev"]
  resources: ["agents"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["agentcontroller.dev"]
  resources: ["agents/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
kopf peering (replicas > 1): the replicas keep their liveness in one peering object and watch
it. Cluster-wide controllers use ClusterKopfPeering, namespaced ones a KopfPeering per namespace.
Argument: "cluster" or "namespaced".
*/}}
{{- define "agent-controller.peeringRule" -}}
- apiGroups: ["kopf.dev"]
  resources: [{{ if eq . "cluster" }}"clusterkopfpeerings"{{ else }}"kopfpeerings"{{ end }}]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
