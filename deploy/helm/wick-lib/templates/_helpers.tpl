{{/*
Shared templates of Wick's service charts. Each service chart calls these with its own root
context; the service's defaults (ops port, binary) come from its values.yaml.
*/}}

{{- define "wick.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; a release named after the chart keeps the plain name. */}}
{{- define "wick.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wick.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wick.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wick.labels" -}}
{{ include "wick.selectorLabels" . }}
app.kubernetes.io/part-of: wick
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "wick.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The service's settings as environment variables: `config.<section>.<key>` becomes
`WICK__<SECTION>__<KEY>` (lists are joined with commas, which the services split again).
`secretEnv` adds settings read from Secrets (database URLs with passwords, API keys). The
operations endpoint always listens on every address, on `ops.port`.
*/}}
{{- define "wick.env" -}}
- name: WICK__OPS__LISTEN
  value: {{ printf "0.0.0.0:%v" .Values.ops.port | quote }}
{{- range $section, $keys := .Values.config }}
{{- range $key, $value := $keys }}
- name: {{ printf "WICK__%s__%s" (upper $section) (upper $key) }}
  value: {{ if kindIs "slice" $value }}{{ join "," $value | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end }}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Liveness and readiness on the operations endpoint. */}}
{{- define "wick.probes" -}}
livenessProbe:
  httpGet:
    path: /health/livez
    port: ops
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: {{ .Values.probes.livenessFailureThreshold }}
readinessProbe:
  httpGet:
    path: /health/readyz
    port: ops
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: {{ .Values.probes.readinessFailureThreshold }}
startupProbe:
  httpGet:
    path: /health/livez
    port: ops
  periodSeconds: 2
  failureThreshold: {{ .Values.probes.startupFailureThreshold }}
{{- end -}}

{{/* What every Wick pod shares: non-root, read-only root, no privileges. */}}
{{- define "wick.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "wick.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Scheduling settings passed through from values. */}}
{{- define "wick.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A ClusterIP Service for the ops port plus the service's own `service.ports`. */}}
{{- define "wick.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "wick.fullname" . }}
  labels:
    {{- include "wick.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  {{- if .Values.service.headless }}
  clusterIP: None
  {{- end }}
  selector:
    {{- include "wick.selectorLabels" . | nindent 4 }}
  ports:
    - name: ops
      port: {{ .Values.ops.port }}
      targetPort: ops
    {{- range .Values.service.ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
    {{- end }}
{{- end -}}

{{- define "wick.pdb" -}}
{{- if .Values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "wick.fullname" . }}
  labels:
    {{- include "wick.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "wick.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Prometheus Operator scrape of /metrics on the ops port. */}}
{{- define "wick.serviceMonitor" -}}
{{- if .Values.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "wick.fullname" . }}
  labels:
    {{- include "wick.labels" . | nindent 4 }}
    {{- with .Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "wick.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: ops
      path: /metrics
      interval: {{ .Values.serviceMonitor.interval }}
{{- end }}
{{- end -}}

{{/*
Ingress: the ops port from the monitoring namespace (Prometheus) and the kubelet's probes (which
NetworkPolicies do not filter), plus the service's `networkPolicy.ingress` rules. Egress: DNS and
the listed peers (broker, database, Redis, exchanges).
*/}}
{{- define "wick.networkPolicy" -}}
{{- if .Values.networkPolicy.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "wick.fullname" . }}
  labels:
    {{- include "wick.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "wick.selectorLabels" . | nindent 6 }}
  policyTypes: ["Ingress", "Egress"]
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              {{- toYaml .Values.networkPolicy.metricsNamespaceLabels | nindent 14 }}
      ports:
        - port: ops
    {{- with .Values.networkPolicy.ingress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  egress:
    - ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    {{- with .Values.networkPolicy.egress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- end -}}
