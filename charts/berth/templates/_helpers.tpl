{{/*
Chart name, truncated to 63 characters (a label value limit).
*/}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the objects: <release>-<chart>, or the release name when it already contains the
chart name.
*/}}
{{- define "berth.fullname" -}}
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

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
*/}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: berth
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: immutable on a Deployment, so only name and instance.
*/}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is given, else repository:tag (tag defaults to
the appVersion).
*/}}
{{- define "berth.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Watched namespaces, de-duplicated and sorted.
*/}}
{{- define "berth.watchNamespaces" -}}
{{- .Values.operator.watchNamespaces | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
Fail early on combinations that cannot work.
*/}}
{{- define "berth.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "replicaCount > 1 requires operator.leaderElection.enabled=true: two replicas without a leader would both write" }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced kinds the operator manages. Explicit resources and verbs, no "*".
Used by the ClusterRole (all namespaces) or by one Role per watched namespace.
*/}}
{{- define "berth.namespacedRules" -}}
{{- /* Server-side apply is `patch` (and `create` for a first apply); no code path uses `update`. */}}
{{- $owned := list "get" "list" "watch" "create" "patch" "delete" }}
# The operator's own API: it reads all five kinds and writes only their status.
- apiGroups: ["berth.dev"]
  resources: [appenvironments, databaseinstances, backuppolicies, backups, restores]
  verbs: [get, list, watch]
# Backups: a policy's schedule creates them, the operator labels them and adds or removes its
# data finalizer (patch), and retention deletes them.
- apiGroups: ["berth.dev"]
  resources: [backups]
  verbs: [create, patch, delete]
# Restores: a policy's restore drill (spec.verify) creates one, owned by the policy, and
# deletes it after a passed drill; what it writes is checked against the tenant's account.
- apiGroups: ["berth.dev"]
  resources: [restores]
  verbs: [create, delete]
# AppEnvironments: only their `berth.dev/volumes` finalizer (claims with `deletionPolicy:
# Delete` are deleted by Berth when the app goes), written as the whole list under a
# resourceVersion precondition.
- apiGroups: ["berth.dev"]
  resources: [appenvironments]
  verbs: [patch]
- apiGroups: ["berth.dev"]
  resources: [appenvironments/status, databaseinstances/status, backuppolicies/status, backups/status, restores/status]
  verbs: [get, patch]
# Owner references with blockOwnerDeletion on the children need `update` of the owner's finalizers.
- apiGroups: ["berth.dev"]
  resources: [appenvironments/finalizers, databaseinstances/finalizers, backuppolicies/finalizers, backups/finalizers, restores/finalizers]
  verbs: [update]
# Children of AppEnvironment and DatabaseInstance (never of a Backup or Restore: those act as
# the tenant's ServiceAccount, below).
- apiGroups: [""]
  resources: [serviceaccounts, services, configmaps, persistentvolumeclaims]
  verbs: {{ toJson $owned }}
# Secrets: only the DatabaseInstance credentials (generated, then kept; one per user).
#   get, list, watch: the watch cache of those Secrets (RBAC cannot narrow a watch to Berth's
#     label, so this reads every Secret in scope) and the current password before a rotation;
#   create, patch: server-side apply of the credentials an instance generates;
#   delete: the Secret of a database user removed from the instance's spec.
# Storage credentials and repository keys are read as the tenant's ServiceAccount, never as
# the operator, and the operator no longer copies any Secret between namespaces.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
# Pod readiness of databases; the container states of AppEnvironment pods (waiting reasons
# such as CreateContainerConfigError in the app's conditions).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events on the custom resources (both event APIs: kube-rs' recorder uses events.k8s.io).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: ["events.k8s.io"]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: {{ toJson $owned }}
# RabbitMQ peer discovery: the Role and RoleBinding of each cluster. Granting "get endpoints"
# needs the operator to hold it (RBAC escalation prevention).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: {{ toJson $owned }}
- apiGroups: [""]
  resources: [endpoints]
  verbs: [get]
# Jobs: the AppEnvironments' migration Jobs are the operator's own (server-side apply, old
# ones deleted); the agent Jobs of backups and restores are only watched here, they are
# created as the tenant's ServiceAccount.
- apiGroups: [batch]
  resources: [jobs]
  verbs: {{ toJson $owned }}
# AppEnvironment spec.cronJobs.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: {{ toJson $owned }}
- apiGroups: [networking.k8s.io]
  resources: [ingresses, networkpolicies]
  verbs: {{ toJson $owned }}
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: {{ toJson $owned }}
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: {{ toJson $owned }}
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: {{ toJson $owned }}
# AppEnvironment spec.externalSecrets: the ExternalSecrets the External Secrets Operator syncs
# (their target Secrets are written by that operator, not by Berth).
- apiGroups: [external-secrets.io]
  resources: [externalsecrets]
  verbs: {{ toJson $owned }}
# AppEnvironment spec.access: RBAC cannot scope pods, logs, exec or the creation of Backups and
# Restores by name, so a team gets those from these ClusterRoles, bound in its app's namespace
# only. `bind` lets Berth bind them without holding what they grant (pods/log, pods/exec,
# create of Restores): it gains no right it would only pass on. The named rules of the app's
# own Role use only verbs Berth already holds (the Role and RoleBinding rule above).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  verbs: [bind]
  resourceNames: [berth-access-view, berth-access-operate, berth-access-exec]
# Tenancy: BackupPolicies, Backups and Restores act as a ServiceAccount of their own
# namespace. Impersonating a ServiceAccount needs only this (the API server adds the account's
# groups itself): no `impersonate` on users or groups.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [impersonate]
{{- if .Values.tenancy.enforceDefaultServiceAccount }}
  resourceNames: [{{ .Values.tenancy.defaultServiceAccount | quote }}]
{{- end }}
{{- with .Values.rbac.extraRules }}
# rbac.extraRules
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
RBAC rules for cluster-scoped kinds: always in a ClusterRole.
*/}}
{{- define "berth.clusterRules" -}}
# Storage classes: volume expansion support of DatabaseInstance PVCs.
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list, watch]
# Namespaces: a Restore checks that its target namespaces exist (Berth never creates them).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get]
{{- with .Values.rbac.extraClusterRules }}
# rbac.extraClusterRules
{{ toYaml . }}
{{- end }}
{{- end }}
