{{/* Chart name, truncated to a DNS label. */}}
{{- define "chat-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release already carries the chart name. */}}
{{- define "chat-gateway.fullname" -}}
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

{{/* The operator's selector labels (never the gateway pods' app.kubernetes.io/name). */}}
{{- define "chat-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-gateway.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the operator's objects: the selector labels plus the common ones. */}}
{{- define "chat-gateway.labels" -}}
helm.sh/chart: {{ include "chat-gateway.chart" . }}
{{ include "chat-gateway.selectorLabels" . }}
app.kubernetes.io/component: operator
{{ include "chat-gateway.commonLabels" . }}
{{- end -}}

{{/* Labels of an object that is not the operator's: `component` names what it is. */}}
{{- define "chat-gateway.componentLabels" -}}
helm.sh/chart: {{ include "chat-gateway.chart" .ctx }}
app.kubernetes.io/name: {{ include "chat-gateway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{ include "chat-gateway.commonLabels" .ctx }}
{{- end -}}

{{/* The standard labels every object of the release carries besides chart, name, instance
     and component, then the user's commonLabels. A test checks them on every object. */}}
{{- define "chat-gateway.commonLabels" -}}
app.kubernetes.io/part-of: chatgateway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "chat-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chat-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chat-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Operator image: repository[@digest | :tag], tag defaulting to appVersion. */}}
{{- define "chat-gateway.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "chat-gateway.gatewayImage" -}}
{{- printf "%s:%s" .Values.chatGateway.image.repository (default .Chart.AppVersion .Values.chatGateway.image.tag) -}}
{{- end -}}

{{/* The Service in front of the operator's custom metrics API. */}}
{{- define "chat-gateway.customMetricsService" -}}
{{- printf "%s-custom-metrics" (include "chat-gateway.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the custom metrics API's CA and serving certificate. */}}
{{- define "chat-gateway.customMetricsSecret" -}}
{{- printf "%s-custom-metrics-tls" (include "chat-gateway.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "namespace/service" of another provider owning a custom.metrics.k8s.io APIService
     (install-time lookup), or nothing. Without a cluster (helm template) lookup finds nothing. */}}
{{- define "chat-gateway.customMetricsOtherProvider" -}}
{{- $ours := include "chat-gateway.customMetricsService" . -}}
{{- $found := list -}}
{{- range $version := list "v1beta1" "v1beta2" -}}
{{- $a := lookup "apiregistration.k8s.io/v1" "APIService" "" (printf "%s.custom.metrics.k8s.io" $version) -}}
{{- if $a -}}
{{- $svc := dig "spec" "service" dict $a -}}
{{- if not $svc -}}
{{- $found = append $found (printf "%s: local" $version) -}}
{{- else if not (and (eq (dig "namespace" "" $svc) $.Release.Namespace) (eq (dig "name" "" $svc) $ours)) -}}
{{- $found = append $found (printf "%s: %s/%s" $version (dig "namespace" "" $svc) (dig "name" "" $svc)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join ", " $found -}}
{{- end -}}

{{/* Milliseconds in a duration of the schema's form ("1m30s", "500ms"): the operator
     refuses a Lease under 3s and a scrape interval under 500ms at start, which would
     crash-loop a release `helm install` reported as installed. */}}
{{- define "chat-gateway.durationMs" -}}
{{- $ms := 0 -}}
{{- $unit := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" . -1 -}}
{{- $n := regexFind "^[0-9]+" . | atoi -}}
{{- $ms = add $ms (mul $n (get $unit (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}

{{/* PromQL: one series per pod of a Deployment, labelled namespace, pod and chatgateway
     (the Deployment's name, which is its ChatGateway's), from kube-state-metrics' owner
     series: pod -> ReplicaSet -> Deployment. Pod names cannot be read for it: Kubernetes
     cuts a pod name's prefix at 58 characters, so a ChatGateway named with more than about
     46 has pods whose names hold neither its whole name nor the ReplicaSet's hash. */}}
{{- define "chat-gateway.promql.podGateway" -}}
group by (namespace, pod, chatgateway) (
  label_replace(kube_pod_owner{owner_kind="ReplicaSet"}, "replicaset", "$1", "owner_name", "(.+)")
  * on (namespace, replicaset) group_left (chatgateway)
    group by (namespace, replicaset, chatgateway) (
      label_replace(kube_replicaset_owner{owner_kind="Deployment"}, "chatgateway", "$1", "owner_name", "(.+)")
    )
)
{{- end -}}
