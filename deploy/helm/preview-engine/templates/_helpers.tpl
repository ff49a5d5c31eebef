{{/* Names ------------------------------------------------------------------------ */}}

{{- define "preview-engine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "preview-engine.fullname" -}}
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

{{/* "<fullname>-<suffix>", within the 63 characters of a DNS label. */}}
{{- define "preview-engine.componentName" -}}
{{- $root := index . 0 }}{{- $suffix := index . 1 }}
{{- $full := include "preview-engine.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $full $suffix }}
{{- end }}

{{/* A tenant's target ("cluster:hipaa") as a label value and name part ("cluster-hipaa"). */}}
{{- define "preview-engine.tenantSlug" -}}
{{- $name := .name | default .target }}
{{- regexReplaceAll "[^a-z0-9-]+" (lower $name) "-" | trunc 40 | trimAll "-" }}
{{- end }}

{{- define "preview-engine.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "preview-engine.componentName" (list . "secrets")) }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------- */}}

{{- define "preview-engine.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "preview-engine.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Helm's own mark: never the engine's `app.kubernetes.io/managed-by: preview-engine`,
which the sweeper reads as "a preview's object". */}}
{{- define "preview-engine.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "preview-engine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: preview-engine
{{- end }}

{{/* The common labels and a component's selector: (list root selectorDict). */}}
{{- define "preview-engine.labelsWith" -}}
{{- toYaml (merge (deepCopy (index . 1)) (include "preview-engine.labels" (index . 0) | fromYaml)) }}
{{- end }}

{{- define "preview-engine.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Secrets ---------------------------------------------------------------------- */}}

{{/* Secret settings every service needs: worker and starter refuse to start while one
is unset or a development value (Settings.require_secure). */}}
{{- define "preview-engine.sharedSecretKeys" -}}
PREVIEW_CODEC_KEYS PREVIEW_CODEC_TOKEN PREVIEW_GITHUB_WEBHOOK_SECRET PREVIEW_GITLAB_WEBHOOK_TOKEN PREVIEW_MASKING_KEY PREVIEW_DATABASE_URL
{{- /* With KMS wrapping new secrets, the master keys only unwrap older ones. */}}
{{- if not (hasKey .Values.settings "PREVIEW_KMS_KEY_ID") }} PREVIEW_MASTER_KEYS{{ end }}
{{- end }}

{{- define "preview-engine.requiredSecretKeys" -}}
{{ include "preview-engine.sharedSecretKeys" . }} PREVIEW_PREVIEW_DATABASE_URL
{{- end }}

{{- define "preview-engine.knownSecretKeys" -}}
{{ include "preview-engine.requiredSecretKeys" . }} PREVIEW_MASTER_KEYS PREVIEW_ADMIN_TOKEN PREVIEW_GITHUB_TOKEN PREVIEW_GITLAB_TOKEN PREVIEW_TEMPORAL_API_KEY
{{- end }}

{{/* env entries for (list root requiredKeys optionalKeys), each key from the Secret. */}}
{{- define "preview-engine.secretEnv" -}}
{{- $root := index . 0 }}
{{- $name := include "preview-engine.secretName" $root }}
{{- range (index . 1) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef: {name: {{ $name }}, key: {{ . }}}
{{- end }}
{{- range (index . 2) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef: {name: {{ $name }}, key: {{ . }}, optional: true}
{{- end }}
{{- end }}

{{/* Pods ------------------------------------------------------------------------- */}}

{{/* What every container of the engine gets: settings, runtime variables, /tmp. */}}
{{- define "preview-engine.commonEnv" -}}
- {name: PREVIEW_LOG_LEVEL, value: {{ .Values.logLevel | quote }}}
- {name: PYTHONUNBUFFERED, value: "1"}
- {name: PYTHONDONTWRITEBYTECODE, value: "1"}
- {name: HOME, value: /tmp}
{{- end }}

{{- define "preview-engine.podAnnotations" -}}
{{- $root := index . 0 -}}
checksum/settings: {{ include (print $root.Template.BasePath "/settings.yaml") $root | sha256sum }}
{{- if not $root.Values.secrets.existingSecret }}
checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
{{- end }}
{{- with index . 1 }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Prometheus' pod discovery annotations: (list root port), when metrics are on. */}}
{{- define "preview-engine.scrapeAnnotations" -}}
{{- $m := (index . 0).Values.metrics }}
{{- if and $m.enabled $m.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Scheduling fields of a pod spec from one component's values. */}}
{{- define "preview-engine.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* One worker Deployment: (dict root name component selector values args maxAge
automount serviceAccount extraEnv extraVolumes extraMounts). The lifecycle worker
and the tenant workers are one program with different --target. */}}
{{- define "preview-engine.workerDeployment" -}}
{{- $root := .root }}
{{- $v := .values }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  labels:
    {{- include "preview-engine.labelsWith" (list $root .selector) | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- toYaml .selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "preview-engine.labelsWith" (list $root .selector) | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "preview-engine.podAnnotations" (list $root $v.podAnnotations) | nindent 8 }}
        {{- with include "preview-engine.scrapeAnnotations" (list $root $root.Values.metrics.workerPort) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: {{ .automount }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets: {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | default 60 }}
      {{- with include "preview-engine.scheduling" $v | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: worker
          image: {{ include "preview-engine.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", "worker"{{ range .args }}, {{ . | quote }}{{ end }}]
          {{- if $root.Values.metrics.enabled }}
          ports:
            - {name: metrics, containerPort: {{ $root.Values.metrics.workerPort }}, protocol: TCP}
          {{- end }}
          envFrom:
            - configMapRef: {name: {{ include "preview-engine.componentName" (list $root "settings") }}}
          env:
            {{- include "preview-engine.commonEnv" $root | nindent 12 }}
            {{- include "preview-engine.secretEnv" (list $root .requiredSecrets .optionalSecrets) | trim | nindent 12 }}
            {{- if $root.Values.metrics.enabled }}
            # Every address of the pod: Prometheus scrapes it from outside.
            - {name: PREVIEW_WORKER_METRICS_ADDRESS, value: {{ printf "0.0.0.0:%v" $root.Values.metrics.workerPort | quote }}}
            {{- end }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          # Does Temporal see this pod's worker (`1@<pod name>`: the SDK's identity)
          # polling its queue? Fails only when Temporal answers and it is not there;
          # Temporal out of reach passes (a restart cannot fix that).
          {{- $probe := list "python" "/etc/preview-engine/probe/worker_probe.py" "--max-age" (toString .maxAge) }}
          {{- $probe = concat $probe .args }}
          startupProbe:
            exec: {command: {{ toJson $probe }}}
            periodSeconds: 10
            timeoutSeconds: 20
            failureThreshold: 30
          readinessProbe:
            exec: {command: {{ toJson $probe }}}
            periodSeconds: 30
            timeoutSeconds: 20
            failureThreshold: 2
          livenessProbe:
            exec: {command: {{ toJson $probe }}}
            periodSeconds: 60
            timeoutSeconds: 20
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            - {name: probe, mountPath: /etc/preview-engine/probe, readOnly: true}
            {{- with .extraMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: {{ $v.tmpSizeLimit }}}
        - name: probe
          configMap:
            name: {{ include "preview-engine.componentName" (list $root "worker-probe") }}
            defaultMode: 0444
        {{- with .extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}

{{/* A PodDisruptionBudget: (dict root name selector pdb). */}}
{{- define "preview-engine.pdb" -}}
{{- if .pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels:
    {{- include "preview-engine.labels" .root | nindent 4 }}
spec:
  {{- if hasKey .pdb "minAvailable" }}
  minAvailable: {{ .pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .pdb.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- toYaml .selector | nindent 6 }}
{{- end }}
{{- end }}

{{/* Egress rules of a NetworkPolicy: (list root [destination names]). */}}
{{- define "preview-engine.egressRules" -}}
{{- $root := index . 0 }}
{{- $np := $root.Values.networkPolicy }}
{{- range (index . 1) }}
{{- $d := required (printf "networkPolicy.destinations.%s is not defined" .) (get $np.destinations .) }}
{{- if or $d.cidrs $d.peers }}
- to:
    {{- range $d.cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
    {{- with $d.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports: {{- toYaml $d.ports | nindent 4 }}
{{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "preview-engine.workerServiceAccount" -}}
{{- .Values.worker.serviceAccount.name | default (include "preview-engine.componentName" (list . "worker")) }}
{{- end }}
