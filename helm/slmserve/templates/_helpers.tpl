{{/* The chart name, or nameOverride (63 characters at most, a Kubernetes name). */}}
{{- define "slmserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-qualified name of every object: fullnameOverride, else release-chart (the release
name alone when it already holds the chart name). */}}
{{- define "slmserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The labels that select this release's pods (Services, PDB, monitors, NetworkPolicy). */}}
{{- define "slmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slmserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The labels every object carries: the selector labels plus chart, version and manager. */}}
{{- define "slmserve.labels" -}}
{{ include "slmserve.selectorLabels" . }}
{{ include "slmserve.chartLabels" . }}
{{- end -}}

{{/* Chart, version and manager: beside the selector labels of the serving pods or the load test's. */}}
{{- define "slmserve.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* An image of values (repository, tag, digest): by digest when one is set, else by tag. */}}
{{- define "slmserve.imageRef" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end -}}
{{- end -}}

{{/* The slmserve image. */}}
{{- define "slmserve.image" -}}
{{ include "slmserve.imageRef" .Values.image }}
{{- end -}}

{{/* The catalog: inline wins; otherwise a shipped catalog file, parsed (never copied into values). */}}
{{- define "slmserve.catalog" -}}
{{- $catalog := dict -}}
{{- if .Values.catalog.inline -}}
{{- $catalog = deepCopy .Values.catalog.inline -}}
{{- else -}}
{{- $file := printf "catalogs/%s.yaml" .Values.catalog.name -}}
{{- $text := .Files.Get $file -}}
{{- if not $text -}}
{{- fail (printf "catalog.name=%q: no file %s in the chart (shipped: cpu, phi35)" .Values.catalog.name $file) -}}
{{- end -}}
{{- $catalog = fromYaml $text -}}
{{- end -}}
{{- /* `router:` is the edge block's old name: the catalog reaches Serve as `edge:` */ -}}
{{- if hasKey $catalog "router" -}}
{{- if hasKey $catalog "edge" -}}
{{- fail "the catalog sets both edge: and router: (router: is edge:'s old name)" -}}
{{- end -}}
{{- $_ := set $catalog "edge" (get $catalog "router") -}}
{{- $_ := unset $catalog "router" -}}
{{- end -}}
{{- /* serve.dataPlane, when set, is the catalog's edge.data_plane (validated by the catalog schema) */ -}}
{{- with .Values.serve.dataPlane -}}
{{- $edge := deepCopy (get $catalog "edge" | default dict) -}}
{{- $_ := set $edge "data_plane" . -}}
{{- $_ := set $catalog "edge" $edge -}}
{{- end -}}
{{- toYaml $catalog -}}
{{- end -}}

{{/* The catalog's data plane: the values' serve.dataPlane is already in its edge block. */}}
{{- define "slmserve.dataPlane" -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- ternary "routed" "direct" (eq (get (get $catalog "edge" | default dict) "data_plane" | default "auto") "routed") -}}
{{- end -}}

{{/* The Serve applications (services/core/layout.py): the platform's at `/`, then, on the direct plane,
one per model under its internal prefix, named by the model's name with what Serve refuses replaced. */}}
{{- define "slmserve.applications" -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- $apps := list (dict "name" .Values.serve.appName "route_prefix" "/") -}}
{{- if eq (include "slmserve.dataPlane" .) "direct" -}}
{{- range $model := (get $catalog "models" | default list) -}}
{{- $slug := regexReplaceAll "[^A-Za-z0-9._-]+" $model.name "-" -}}
{{- $apps = append $apps (dict "name" (printf "%s-%s" $.Values.serve.appName $slug) "route_prefix" (printf "/_slmserve/%s" $slug) "model" $model.name) -}}
{{- end -}}
{{- end -}}
{{- toYaml $apps -}}
{{- end -}}

{{/* Every name and alias clients may put in `model` -> its application's route prefix, as JSON
(HAProxy's map, written by the wrapper: services/haproxy/wrapper.py). Empty when routed. A model that
scales to zero (min_replicas 0) is left to the platform application, which holds its requests while a
replica starts (services/core/layout.py model_routes). */}}
{{- define "slmserve.modelRoutes" -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- $routes := dict -}}
{{- if eq (include "slmserve.dataPlane" .) "direct" -}}
{{- range $model := (get $catalog "models" | default list) -}}
{{- $autoscaling := get (get $model "deployment" | default dict) "autoscaling_config" | default dict -}}
{{- if not (and (hasKey $autoscaling "min_replicas") (eq (int (get $autoscaling "min_replicas")) 0)) -}}
{{- $prefix := printf "/_slmserve/%s" (regexReplaceAll "[^A-Za-z0-9._-]+" $model.name "-") -}}
{{- range $name := prepend ($model.aliases | default list) $model.name -}}
{{- $_ := set $routes $name $prefix -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $routes -}}
{{- end -}}

{{/* Environment shared by head and workers. Ray Serve's HAProxy reads the session header's name
and whether to send request bodies to the ReplicaPicker (a direct-mode model with more than one
replica, routed by prefix affinity, or least loaded with LoRA adapters, needs them), as
services/runtime.py routing_environment sets them for local runs. */}}
{{- define "slmserve.env" -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- $edge := get $catalog "edge" | default dict -}}
{{- $models := get $catalog "models" | default list -}}
{{- $direct := eq (include "slmserve.dataPlane" .) "direct" -}}
{{- /* bodies go to the ReplicaPickers when any model's router reads them (one Ray-wide switch):
ModelEntry.router_reads_body, every policy but Ray's power-of-two where there is a replica choice */ -}}
{{- $readsBody := false -}}
{{- range $model := $models -}}
{{- $lora := hasKey $model "lora" -}}
{{- $policy := get (get $model "routing" | default dict) "policy" | default "prefix-affinity" -}}
{{- $deployment := get $model "deployment" | default dict -}}
{{- $choice := or (hasKey $deployment "autoscaling_config") (gt (int (get $deployment "num_replicas" | default 1)) 1) -}}
{{- if and $choice (ne $policy "power-of-two") -}}
{{- $readsBody = true -}}
{{- end -}}
{{- end -}}
- name: SLMSERVE_CACHE_DIR
  value: {{ .Values.serve.cacheDir | quote }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ ternary "1" "0" (eq .Values.serve.ingress "haproxy") | quote }}
- name: RAY_SERVE_SESSION_ID_HEADER_KEY
  value: {{ get $edge "session_header" | default "X-Session-Id" | lower | quote }}
- name: RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY
  value: {{ ternary "1" "0" (and $direct $readsBody) | quote }}
- name: RAY_SERVE_HAPROXY_BINARY_PATH
  value: {{ .Values.serve.haproxyWrapper | quote }}
- name: RAY_SERVE_HAPROXY_TUNE_BUFSIZE
  value: "262144"
# A request a replica closed before answering a byte is retried on another (services/haproxy/rules.py).
- name: RAY_SERVE_HAPROXY_RETRY_ON
  value: "conn-failure empty-response"
# Serve restarts a node's dead proxy (HAProxy) after 3 failed checks: 0.5 s apart, not 10 (services/core/timing.py).
- name: RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S
  value: "0.5"
- name: SLMSERVE_MODEL_ROUTES
  value: {{ include "slmserve.modelRoutes" . | quote }}
{{- if .Values.gateway.httpRoute.enabled }}
# HAProxy places requests by the header the Gateway's body-based router sets (templates/httproute.yaml).
- name: SLMSERVE_MODEL_HEADER
  value: {{ .Values.gateway.httpRoute.modelHeader | quote }}
{{- end }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: VLLM_NO_USAGE_STATS
  value: "1"
{{- if .Values.modelCache.enabled }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.modelCache.mountPath | quote }}
- name: VLLM_CACHE_ROOT
  value: {{ printf "%s/vllm" .Values.modelCache.mountPath | quote }}
{{- end }}
{{- if .Values.secrets.hfToken.name }}
# A file, not an environment variable: environments leak into logs, crash reports and child processes.
- name: HF_TOKEN_PATH
  value: /etc/slmserve/hf-token/{{ .Values.secrets.hfToken.key }}
{{- end }}
{{- with .Values.secrets.apiKeys.name }}
- name: SLMSERVE_API_KEYS_FILE
  value: /etc/slmserve/api-keys/{{ $.Values.secrets.apiKeys.key }}
{{- end }}
{{- with .Values.serve.profile }}
- name: SLMSERVE_PROFILE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tracing.otlpTracesEndpoint }}
# Request traces from the edge and vLLM's engines (services/edge/tracing.py); the catalog's own
# tracing.otlp_traces_endpoint wins where it is set.
- name: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The volumes of a Ray pod (head or worker): shared memory of `shmSize`, /tmp, the model cache
and the LoRA adapters when enabled. Takes (dict "root" $ "shmSize" SIZE). */}}
{{- define "slmserve.volumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
- name: tmp
  emptyDir: {}
{{- if .root.Values.modelCache.enabled }}
- name: model-cache
  persistentVolumeClaim:
    claimName: {{ .root.Values.modelCache.existingClaim | default (printf "%s-model-cache" (include "slmserve.fullname" .root)) }}
{{- end }}
{{- with .root.Values.loraAdapters }}
{{- if .enabled }}
- name: lora-adapters
  {{- if .existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .existingClaim }}
    readOnly: true
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}
{{- end }}
{{- with .root.Values.secrets.apiKeys.name }}
- name: api-keys
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .root.Values.secrets.hfToken.name }}
- name: hf-token
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{/* Where the volumes of slmserve.volumes are mounted in the Ray container. */}}
{{- define "slmserve.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: tmp
  mountPath: /tmp
{{- if .Values.modelCache.enabled }}
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
{{- end }}
{{- if .Values.loraAdapters.enabled }}
- name: lora-adapters
  mountPath: {{ .Values.loraAdapters.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.secrets.apiKeys.name }}
- name: api-keys
  mountPath: /etc/slmserve/api-keys
  readOnly: true
{{- end }}
{{- if .Values.secrets.hfToken.name }}
- name: hf-token
  mountPath: /etc/slmserve/hf-token
  readOnly: true
{{- end }}
{{- end -}}

{{/* Startup, liveness and readiness probes on the Serve port: live once the process answers,
ready once every catalog model has a running replica (/v1/health/ready). */}}
{{- define "slmserve.appProbes" -}}
startupProbe:
  httpGet: {path: /v1/health/live, port: serve}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: {{ .Values.probes.startupFailureThreshold }}
livenessProbe:
  httpGet: {path: /v1/health/live, port: serve}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /v1/health/ready, port: serve}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: 3
{{- end -}}


{{/* The init container that fills the adapters volume at pod start (loraAdapters.initContainer),
and the checks that the volume and the catalog agree. */}}
{{- define "slmserve.adapterInit" -}}
{{- $lora := .Values.loraAdapters -}}
{{- if $lora.enabled -}}
{{- if and (not $lora.existingClaim) (not $lora.initContainer.image) -}}
{{- fail "loraAdapters.enabled needs loraAdapters.existingClaim (a PVC of adapters) or loraAdapters.initContainer.image (to fetch them)" -}}
{{- end -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- range $model := (get $catalog "models" | default list) -}}
{{- with (get $model "lora") -}}
{{- if not (hasPrefix $lora.mountPath (get . "adapters_dir" | default "")) -}}
{{- fail (printf "catalog model %s reads adapters from %s, outside loraAdapters.mountPath %s" (get $model "name") (get . "adapters_dir") $lora.mountPath) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $lora.initContainer.image (not $lora.existingClaim) }}
initContainers:
  - name: fetch-lora-adapters
    image: {{ $lora.initContainer.image }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    {{- with $lora.initContainer.command }}
    command:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $lora.initContainer.env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $lora.initContainer.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml .Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      - name: lora-adapters
        mountPath: {{ $lora.mountPath }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The worker groups, as {"groups": [...]}. A catalog with a `cluster:` block owns the groups
and their scaling: its node_groups are the groups (GPUs per pod, min and max pods; the pods' CPU and
memory unless a workerGroups entry of the same name sizes them with `resources`), and workerGroups
entries add Kubernetes pod settings (resources, selectors, tolerations, env, shm, ...). A catalog
without one leaves the groups to workerGroups entirely. Either way every group comes out with
gpusPerPod, replicas, minReplicas, maxReplicas and resources. */}}
{{- define "slmserve.workerGroups" -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- $cluster := get $catalog "cluster" -}}
{{- $groups := list -}}
{{- if $cluster -}}
{{- $pods := dict -}}
{{- range .Values.workerGroups -}}
{{- $_ := set $pods .name . -}}
{{- end -}}
{{- $names := list -}}
{{- range $cluster.node_groups -}}
{{- $pod := get $pods .name | default dict -}}
{{- range $field := list "gpusPerPod" "replicas" "minReplicas" "maxReplicas" -}}
{{- if hasKey $pod $field -}}
{{- fail (printf "workerGroups[%s].%s: the catalog's cluster.node_groups sets this group's GPUs and scaling; change it there" $pod.name $field) -}}
{{- end -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- $memory := printf "%vGi" .memory_gib -}}
{{- $size := dict "cpu" (toString .cpus) "memory" $memory -}}
{{- $nodes := get . "min_nodes" | default 0 -}}
{{- $resources := get $pod "resources" | default (dict "requests" $size "limits" $size) -}}
{{- $shape := dict "name" .name "gpusPerPod" (int .gpus) "replicas" (int $nodes) "minReplicas" (int $nodes) "maxReplicas" (int .max_nodes) "resources" $resources -}}
{{- $groups = append $groups (merge $shape (deepCopy $pod)) -}}
{{- end -}}
{{- range .Values.workerGroups -}}
{{- if not (has .name $names) -}}
{{- fail (printf "workerGroups[%s]: the catalog's cluster.node_groups has no group of that name (%s)" .name (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- range $group := .Values.workerGroups -}}
{{- range $field := list "gpusPerPod" "minReplicas" "maxReplicas" "resources" -}}
{{- if not (hasKey $group $field) -}}
{{- fail (printf "workerGroups[%s].%s is required: the catalog has no cluster.node_groups to take it from" $group.name $field) -}}
{{- end -}}
{{- end -}}
{{- $groups = append $groups (merge (dict "replicas" ($group.replicas | default $group.minReplicas)) $group) -}}
{{- end -}}
{{- end -}}
{{- if not $groups -}}
{{- fail "no worker groups: give the catalog a cluster.node_groups block, or set workerGroups (gpusPerPod, minReplicas, maxReplicas, resources)" -}}
{{- end -}}
{{- toYaml (dict "groups" $groups) -}}
{{- end -}}

{{/* Ray autoscaler options: the catalog's cluster.autoscaler when the catalog has a `cluster:`
block (values may not set them too), else autoscaler.idleTimeoutSeconds / upscalingMode. */}}
{{- define "slmserve.autoscalerScaling" -}}
{{- $catalog := include "slmserve.catalog" . | fromYaml -}}
{{- $cluster := get $catalog "cluster" -}}
{{- $values := .Values.autoscaler -}}
{{- if $cluster -}}
{{- range $field := list "idleTimeoutSeconds" "upscalingMode" -}}
{{- if hasKey $values $field -}}
{{- fail (printf "autoscaler.%s: the catalog's cluster.autoscaler sets it; change it there" $field) -}}
{{- end -}}
{{- end -}}
{{- $options := get $cluster "autoscaler" | default dict -}}
upscalingMode: {{ get $options "upscaling_mode" | default "Default" }}
idleTimeoutSeconds: {{ hasKey $options "idle_timeout_s" | ternary (get $options "idle_timeout_s") 300 | int }}
{{- else -}}
upscalingMode: {{ $values.upscalingMode | default "Default" }}
idleTimeoutSeconds: {{ hasKey $values "idleTimeoutSeconds" | ternary $values.idleTimeoutSeconds 300 | int }}
{{- end -}}
{{- end -}}

{{/* The port of Ray's metrics agent on every Ray pod (KubeRay's default metrics-export-port): the
container port the PodMonitor scrapes and the NetworkPolicy opens, named in this one place. */}}
{{- define "slmserve.rayMetricsPort" -}}
8080
{{- end -}}

{{/* HAProxy's threads on one pod (serve.haproxyThreads; Ray's RAY_SERVE_HAPROXY_NBTHREAD): a number as
set, or auto: the pod's CPU request (else its limit, as Kubernetes reads it) in whole cores ("2500m"
and 2.5 give 2), at least 1, and Ray's own 4 where the pod names no CPU. Called with (dict "root" $ "resources" <the pod's resources>). */}}
{{- define "slmserve.haproxyThreads" -}}
{{- $setting := .root.Values.serve.haproxyThreads -}}
{{- if ne (toString $setting) "auto" -}}
{{- $setting | int -}}
{{- else -}}
{{- $resources := .resources | default dict -}}
{{- $cpu := toString (dig "requests" "cpu" (dig "limits" "cpu" "" $resources) $resources) -}}
{{- if not $cpu -}}
4
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (trimSuffix "m" $cpu | int) 1000) -}}
{{- else -}}
{{- max 1 (floor $cpu | int) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The load test's pods and objects (templates/loadtest.yaml): labels of their own, never the
serving pods' selector labels; without a component, every pod of the load test. */}}
{{- define "slmserve.loadtestSelector" -}}
app.kubernetes.io/name: {{ include "slmserve.name" .root }}-loadtest
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: locust-{{ . }}
{{- end }}
{{- end -}}

{{- define "slmserve.loadtestLabels" -}}
{{ include "slmserve.loadtestSelector" . }}
{{ include "slmserve.chartLabels" .root }}
{{- end -}}
