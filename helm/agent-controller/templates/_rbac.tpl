{{/*
The controller's permissions: the one list used by the ClusterRole (all namespaces) and by the
Roles (watchNamespaces), so the two cannot drift. Exactly what the controller calls, nothing more:

- agents: kopf watches them, patches finalizers/annotations, deletes them (ttlSecondsAfterFinished);
- agents/status: the reconcile loop's writes;
- pods (+ pods/log for the archive), the prompt ConfigMaps, and the agent's own credentials
  (ServiceAccount, Role, RoleBinding). The Roles it creates grant `get` on agents and
  `get`/`patch` on agents/status, which the controller holds itself, so neither `escalate` nor
  `bind` is needed (that is also the only reason for `get` on agents/status: the controller never
  reads it, but RBAC lets it grant only what it holds). `get` on the ConfigMaps and credentials:
  a retried creation that meets its own object (409) reads it to check the owner;
- agents/finalizers: `update`. Every child carries an ownerReference with blockOwnerDeletion: true;
  where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift and others)
  setting it needs `update` on the owner's finalizers subresource;
- events (core/v1): `create`, and `patch` to aggregate a repeat (a retried cleanup, a creation
  refused again by a quota) into the earlier Event's count, as client-go's recorder does. Only
  core/v1 Events: neither the controller nor kopf uses events.k8s.io.
API discovery needs no rule (system:discovery allows it to every authenticated user). kopf's
optional watch of CustomResourceDefinitions (to notice CRDs created after it started) is denied on
purpose: kopf logs a warning and works without it.
Every rule is needed: tests/rbac/test_rbac_sufficiency.py removes each verb in turn and the
scenarios break.
*/}}
{{- define "agent-controller.rbacRules" -}}
- apiGroups: ["agentcontroller.dev"]
  resources: ["agents"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["agentcontroller.dev"]
  resources: ["agents/status"]
  verbs: ["get", "patch"]
- apiGroups: ["agentcontroller.dev"]
  resources: ["agents/finalizers"]
  verbs: ["update"]
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
{{- end }}

{{/*
Leader election (replicas > 1, `--leader-election`): one coordination.k8s.io/v1 Lease in the
release namespace, named after the release. `create` cannot be limited by name (the object does not
exist yet); `get` and `update` are limited to that one Lease.
*/}}
{{- define "agent-controller.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "agent-controller.leaseName" . | quote }}]
  verbs: ["get", "update"]
{{- end }}

{{/*
The ship endpoint (`ship.enabled`): agent pods authenticate with their own projected token, which
the controller verifies with a TokenReview — `create` on tokenreviews, nothing else.
*/}}
{{- define "agent-controller.shipRules" -}}
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
{{- end }}
