{{/*
Names, labels and the pieces every kustody pod shares. Written for this chart; the resource
fields follow the Kubernetes v1.36 API (a strict validator rejects unknown fields).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kustody.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The base name of every object: fullnameOverride, else the release name when it already holds the
chart name, else "<release>-<chart>". Kept to 40 characters so that suffixes such as
"-nats-headless" stay within the 63-character limit of Service names.
*/}}
{{- define "kustody.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kustody.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Names of cluster-scoped objects carry the namespace: two releases of the same name in two
namespaces must not share a ClusterRole. */}}
{{- define "kustody.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kustody.fullname" .) | trunc 200 | trimSuffix "-" -}}
{{- end -}}

{{- define "kustody.natsName" -}}
{{- printf "%s-nats" (include "kustody.fullname" .) -}}
{{- end -}}

{{- define "kustody.natsHeadlessName" -}}
{{- printf "%s-nats-headless" (include "kustody.fullname" .) -}}
{{- end -}}

{{- define "kustody.generatedSecretName" -}}
{{- printf "%s-auth" (include "kustody.fullname" .) -}}
{{- end -}}

{{/*
Selector labels: name, instance, component. Call with (dict "root" $ "component" "server").
*/}}
{{- define "kustody.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kustody.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
All labels: the selector labels plus version and managed-by. Call with
(dict "root" $ "component" "server"); "version" overrides the app version (NATS objects carry
the NATS version); an empty component leaves the component label out (objects shared by
several components).
*/}}
{{- define "kustody.labels" -}}
{{ include "kustody.selectorLabels" . }}
app.kubernetes.io/version: {{ .version | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* The component of the process that serves the API, the console and (single) the webhook. */}}
{{- define "kustody.apiComponent" -}}
{{- if eq .Values.mode "scaleout" -}}detector{{- else -}}server{{- end -}}
{{- end -}}

{{/* The Service the apiserver's audit webhook posts to. */}}
{{- define "kustody.webhookServiceName" -}}
{{- if eq .Values.mode "scaleout" -}}
{{- printf "%s-receiver" (include "kustody.fullname" .) -}}
{{- else -}}
{{- include "kustody.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "kustody.webhookURL" -}}
{{- if .Values.auth.webhookURL -}}
{{- .Values.auth.webhookURL -}}
{{- else -}}
{{- printf "https://%s.%s.svc:8443/v1/audit" (include "kustody.webhookServiceName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "kustody.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "kustody.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kustody.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when kustody talks to the Kubernetes API (watching the cluster or responding). */}}
{{- define "kustody.needsAPI" -}}
{{- if or .Values.watchCluster.enabled .Values.responder.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret (name) and key of the tokens file, or nothing. */}}
{{- define "kustody.tokensSecretName" -}}
{{- if .Values.auth.tokensSecret.name -}}
{{- .Values.auth.tokensSecret.name -}}
{{- else if .Values.auth.generate -}}
{{- include "kustody.generatedSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "kustody.tokensSecretKey" -}}
{{- if .Values.auth.tokensSecret.name -}}
{{- .Values.auth.tokensSecret.key -}}
{{- else -}}
tokens
{{- end -}}
{{- end -}}

{{/* The Secret (name) and key of the bus token, or nothing. */}}
{{- define "kustody.busTokenSecretName" -}}
{{- if .Values.nats.tokenSecret.name -}}
{{- .Values.nats.tokenSecret.name -}}
{{- else if .Values.auth.generate -}}
{{- include "kustody.generatedSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "kustody.busTokenSecretKey" -}}
{{- if .Values.nats.tokenSecret.name -}}
{{- .Values.nats.tokenSecret.key -}}
{{- else -}}
bus-token
{{- end -}}
{{- end -}}

{{- define "kustody.busURL" -}}
{{- printf "nats://%s.%s.svc:4222" (include "kustody.natsName" .) .Release.Namespace -}}
{{- end -}}

{{/*
Checks of combinations the schema cannot express. Included by every template that depends on
them, so a bad combination fails the render with a message instead of producing manifests
that cannot work.
*/}}
{{- define "kustody.validate" -}}
{{- $v := .Values -}}
{{- if and $v.auth.generate $v.auth.tokensSecret.name -}}
{{- fail "auth.generate and auth.tokensSecret.name exclude each other: either the chart makes the tokens file or you give it" -}}
{{- end -}}
{{- range $k, $_ := $v.serve.extra -}}
{{- if has $k (list "config" "listen" "data-dir" "role" "bus" "store" "store-password-file" "tokens" "tls-cert" "tls-key" "client-ca" "bus-token-file") -}}
{{- fail (printf "serve.extra.%s: this setting is made by the chart from its own values" $k) -}}
{{- end -}}
{{- end -}}
{{- if and (eq (include "kustody.needsAPI" .) "true") (not $v.serviceAccount.create) (not $v.serviceAccount.name) -}}
{{- fail "watchCluster / responder with serviceAccount.create false need serviceAccount.name: the ClusterRoles would be bound to the namespace's default ServiceAccount, which every pod there runs as" -}}
{{- end -}}
{{- if eq $v.mode "scaleout" -}}
{{- /* what kustody serve refuses on a receiver (Plan::of), and on a detector; merged as kustody.serveConfig merges */ -}}
{{- range $k, $val := (mergeOverwrite (dict) (deepCopy $v.serve.extra) (deepCopy $v.receiver.extra)) -}}
{{- if and (eq $k "follow") (ne (toString $val) "false") -}}
{{- fail "serve.extra / receiver.extra: kustody serve --role receiver refuses follow (a receiver keeps no store for the offsets; detectors refuse it too): follow files in mode single" -}}
{{- end -}}
{{- if and (has $k (list "sinks" "playbooks" "watch-cluster")) (ne (toString $val) "false") -}}
{{- fail (printf "serve.extra / receiver.extra: kustody serve --role receiver refuses %s (receivers make no findings): give it to the detectors (detector.extra, serve.sinks, serve.playbooks, watchCluster.enabled)" $k) -}}
{{- end -}}
{{- end -}}
{{- range $k, $val := (mergeOverwrite (dict) (deepCopy $v.serve.extra) (deepCopy $v.detector.extra)) -}}
{{- if and (has $k (list "follow" "replay")) (ne (toString $val) "false") -}}
{{- fail (printf "serve.extra / detector.extra: kustody serve --role detector refuses %s (a detector takes its events from the bus)" $k) -}}
{{- end -}}
{{- end -}}
{{- if not $v.tls.secretName -}}
{{- fail "mode scaleout needs tls.secretName: every receiver and detector must present the same certificate (its names: the -receiver and the API Service), which the apiserver's webhook kubeconfig trusts" -}}
{{- end -}}
{{- if not (include "kustody.tokensSecretName" .) -}}
{{- fail "mode scaleout needs auth.tokensSecret.name (or auth.generate: true): each pod would generate a token file of its own" -}}
{{- end -}}
{{- if not (include "kustody.busTokenSecretName" .) -}}
{{- fail "mode scaleout needs nats.tokenSecret.name (or auth.generate: true): the token NATS and kustody share" -}}
{{- end -}}
{{- if not $v.postgres.host -}}
{{- fail "mode scaleout needs postgres.host: detectors share one PostgreSQL store" -}}
{{- end -}}
{{- if not $v.postgres.passwordSecret.name -}}
{{- fail "mode scaleout needs postgres.passwordSecret.name: the Secret holding the PostgreSQL password" -}}
{{- end -}}
{{- if gt (int $v.bus.streamReplicas) (int $v.nats.replicas) -}}
{{- fail "bus.streamReplicas cannot exceed nats.replicas" -}}
{{- end -}}
{{- range $k, $_ := (merge (dict) $v.receiver.extra $v.detector.extra) -}}
{{- if has $k (list "config" "listen" "data-dir" "role" "bus" "store" "store-password-file" "tokens" "tls-cert" "tls-key" "client-ca" "bus-token-file") -}}
{{- fail (printf "receiver.extra / detector.extra: %s is made by the chart from its own values" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The `kustody serve --config` file of one role: a mapping of flag names (without "--") to values.
Call with (dict "root" $ "role" "all|receiver|detector").
*/}}
{{- define "kustody.serveConfig" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $role := .role -}}
{{- $fullname := include "kustody.fullname" $root -}}
{{- $ns := $root.Release.Namespace -}}
{{- $cfg := dict "listen" "0.0.0.0:8443" "data-dir" "/var/lib/kustody" -}}
{{- with $v.clusterName -}}
{{- $_ := set $cfg "cluster" . -}}
{{- end -}}
{{- if $v.tls.secretName -}}
{{- $_ := set $cfg "tls-cert" "/run/secrets/kustody/tls/tls.crt" -}}
{{- $_ := set $cfg "tls-key" "/run/secrets/kustody/tls/tls.key" -}}
{{- else -}}
{{- /* the certificate made in DATA_DIR/tls on first start names the Service */ -}}
{{- $svc := include "kustody.webhookServiceName" $root -}}
{{- $sans := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $v.clusterDomain) -}}
{{- /* a pinned ClusterIP is what a host-network apiserver may have to use */ -}}
{{- with $v.service.clusterIP -}}
{{- $sans = append $sans . -}}
{{- end -}}
{{- $_ := set $cfg "tls-san" (concat $sans $v.tls.extraSANs | uniq) -}}
{{- end -}}
{{- if include "kustody.tokensSecretName" $root -}}
{{- $_ := set $cfg "tokens" "/run/secrets/kustody/tokens/tokens" -}}
{{- end -}}
{{- if $v.auth.clientCASecret.name -}}
{{- $_ := set $cfg "client-ca" "/run/secrets/kustody/client-ca/ca.crt" -}}
{{- end -}}
{{- if ne $role "receiver" -}}
{{- with $v.serve.retention -}}
{{- $_ := set $cfg "retention" . -}}
{{- end -}}
{{- /* the single server's volume; a shared PostgreSQL is sized by its owner (detector.extra) */ -}}
{{- if eq $role "all" -}}
{{- with $v.serve.maxStoreSize -}}
{{- $_ := set $cfg "max-store-size" . -}}
{{- end -}}
{{- end -}}
{{- if $v.watchCluster.enabled -}}
{{- $_ := set $cfg "watch-cluster" true -}}
{{- end -}}
{{- if $v.serve.sinks -}}
{{- $_ := set $cfg "sinks" "/etc/kustody/sinks.yaml" -}}
{{- end -}}
{{- if $v.serve.playbooks -}}
{{- $_ := set $cfg "playbooks" "/etc/kustody/playbooks.yaml" -}}
{{- end -}}
{{- end -}}
{{- if ne $role "all" -}}
{{- $_ := set $cfg "bus" (include "kustody.busURL" $root) -}}
{{- $_ := set $cfg "bus-token-file" "/run/secrets/kustody/bus/token" -}}
{{- $_ := set $cfg "bus-partitions" (int $v.bus.partitions) -}}
{{- $_ := set $cfg "bus-max-bytes" $v.bus.maxBytes -}}
{{- $_ := set $cfg "bus-replicas" (int $v.bus.streamReplicas) -}}
{{- end -}}
{{- if eq $role "detector" -}}
{{- $pg := $v.postgres -}}
{{- $_ := set $cfg "store" (printf "postgres://%s@%s:%d/%s?sslmode=%s" $pg.user $pg.host (int $pg.port) $pg.database $pg.sslmode) -}}
{{- $_ := set $cfg "store-password-file" "/run/secrets/kustody/postgres/password" -}}
{{- if $pg.caSecret.name -}}
{{- $_ := set $cfg "store-ca" "/run/secrets/kustody/postgres-ca/ca.crt" -}}
{{- end -}}
{{- end -}}
{{- $cfg = mergeOverwrite $cfg (deepCopy $v.serve.extra) -}}
{{- if eq $role "receiver" -}}
{{- $cfg = mergeOverwrite $cfg (deepCopy $v.receiver.extra) -}}
{{- else if eq $role "detector" -}}
{{- $cfg = mergeOverwrite $cfg (deepCopy $v.detector.extra) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod-level security: non-root, one fixed UID and GID, the runtime's seccomp profile. */}}
{{- define "kustody.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security: read-only root, no privilege escalation, no capabilities. */}}
{{- define "kustody.containerSecurityContext" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/*
The pod template of a kustody process. Call with (dict "root" $ "component" "server|receiver|detector").
The data volume ("data") is a volumeClaimTemplate for the server and the detectors, an emptyDir
for the receivers (they keep nothing).
*/}}
{{- define "kustody.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $component := .component -}}
{{- $role := "all" -}}
{{- $configFile := "serve.yaml" -}}
{{- $resources := $v.single.resources -}}
{{- $dataSizeLimit := "" -}}
{{- if eq $component "receiver" -}}
{{- $role = "receiver" -}}
{{- $configFile = "receiver.yaml" -}}
{{- $resources = $v.receiver.resources -}}
{{- $dataSizeLimit = $v.receiver.dataSizeLimit -}}
{{- else if eq $component "detector" -}}
{{- $role = "detector" -}}
{{- $configFile = "detector.yaml" -}}
{{- $resources = $v.detector.resources -}}
{{- end -}}
{{- $api := and (ne $role "receiver") (eq (include "kustody.needsAPI" $root) "true") -}}
{{- $tokens := include "kustody.tokensSecretName" $root -}}
metadata:
  labels:
    {{- include "kustody.labels" (dict "root" $root "component" $component) | nindent 4 }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "kustody.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $api }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: 60
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "kustody.podSecurityContext" (dict "uid" 65532) | nindent 4 }}
  containers:
    - name: kustody
      image: {{ include "kustody.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        - serve
        - --config
        - /etc/kustody/{{ $configFile }}
        {{- if ne $role "all" }}
        - --role
        - {{ $role }}
        {{- end }}
      {{- /* no KUSTODY_DATA_DIR: it would clash with --server in commands run by kubectl exec */}}
      {{- with $v.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: https
          containerPort: 8443
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: https
          scheme: HTTPS
        periodSeconds: 5
        timeoutSeconds: 5
        failureThreshold: 60
      readinessProbe:
        httpGet:
          path: /readyz
          port: https
          scheme: HTTPS
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 3
      livenessProbe:
        httpGet:
          path: /healthz
          port: https
          scheme: HTTPS
        periodSeconds: 20
        timeoutSeconds: 5
        failureThreshold: 3
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- include "kustody.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/kustody
          readOnly: true
        - name: data
          mountPath: /var/lib/kustody
        - name: tmp
          mountPath: /tmp
        {{- if $v.tls.secretName }}
        - name: tls
          mountPath: /run/secrets/kustody/tls
          readOnly: true
        {{- end }}
        {{- if $tokens }}
        - name: tokens
          mountPath: /run/secrets/kustody/tokens
          readOnly: true
        {{- end }}
        {{- if $v.auth.clientCASecret.name }}
        - name: client-ca
          mountPath: /run/secrets/kustody/client-ca
          readOnly: true
        {{- end }}
        {{- if ne $role "all" }}
        - name: bus-token
          mountPath: /run/secrets/kustody/bus
          readOnly: true
        {{- end }}
        {{- if eq $role "detector" }}
        - name: postgres-password
          mountPath: /run/secrets/kustody/postgres
          readOnly: true
        {{- if $v.postgres.caSecret.name }}
        - name: postgres-ca
          mountPath: /run/secrets/kustody/postgres-ca
          readOnly: true
        {{- end }}
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "kustody.fullname" $root }}
    {{- if eq $role "receiver" }}
    - name: data
      emptyDir:
        sizeLimit: {{ $dataSizeLimit }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- if $v.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ $v.tls.secretName }}
        defaultMode: 288 # 0440: owner root, group fsGroup (65532)
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    {{- end }}
    {{- if $tokens }}
    - name: tokens
      secret:
        secretName: {{ $tokens }}
        defaultMode: 288 # 0440
        items:
          - key: {{ include "kustody.tokensSecretKey" $root }}
            path: tokens
    {{- end }}
    {{- if $v.auth.clientCASecret.name }}
    - name: client-ca
      secret:
        secretName: {{ $v.auth.clientCASecret.name }}
        defaultMode: 288 # 0440
        items:
          - key: {{ $v.auth.clientCASecret.key }}
            path: ca.crt
    {{- end }}
    {{- if ne $role "all" }}
    - name: bus-token
      secret:
        secretName: {{ include "kustody.busTokenSecretName" $root }}
        defaultMode: 288 # 0440
        items:
          - key: {{ include "kustody.busTokenSecretKey" $root }}
            path: token
    {{- end }}
    {{- if eq $role "detector" }}
    - name: postgres-password
      secret:
        secretName: {{ $v.postgres.passwordSecret.name }}
        defaultMode: 288 # 0440
        items:
          - key: {{ $v.postgres.passwordSecret.key }}
            path: password
    {{- if $v.postgres.caSecret.name }}
    - name: postgres-ca
      secret:
        secretName: {{ $v.postgres.caSecret.name }}
        defaultMode: 288 # 0440
        items:
          - key: {{ $v.postgres.caSecret.key }}
            path: ca.crt
    {{- end }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The kubeconfig the apiserver's audit webhook uses (--audit-webhook-config-file). Call with
(dict "root" $ "token" TOKEN). The CA is included only when tls.caBundle is given.
*/}}
{{- define "kustody.webhookKubeconfig" -}}
{{- $root := .root -}}
# kube-apiserver --audit-webhook-config-file: where audit batches go (kustody's receiver)
apiVersion: v1
kind: Config
clusters:
  - name: kustody
    cluster:
      server: {{ include "kustody.webhookURL" $root }}
      {{- with $root.Values.tls.caBundle }}
      certificate-authority-data: {{ . | b64enc }}
      {{- end }}
users:
  - name: kube-apiserver
    user:
      token: {{ .token }}
contexts:
  - name: default
    context:
      cluster: kustody
      user: kube-apiserver
current-context: default
{{- end -}}
