#!/usr/bin/env bash
# The two Secrets the manifests mount, made here so that no private key or
# password is in the repository:
#   recsys-tls         a development CA and every certificate (`recsys certs`;
#                      ca.key stays in $DIR, off the cluster)
#   recsys-etcd-users  the etcd users' passwords (`recsys etcd-auth passwords`)
#   recsys-s3          the object store's credentials, from AWS_ACCESS_KEY_ID and
#                      AWS_SECRET_ACCESS_KEY when they are set (bundle-store.yaml)
# A production cluster puts its own CA's certificates (cert-manager, Vault) with
# the same names into recsys-tls instead.
#
# usage: deploy/k8s/secrets.sh [DIR]   (default target/k8s-secrets; kept, so that
#        running it again applies the same files)
# env:   NAMESPACE (recsys), RECSYS (the recsys binary; default: on PATH, else
#        target/release/recsys, else target/debug/recsys)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-target/k8s-secrets}
namespace=${NAMESPACE:-recsys}
recsys=${RECSYS:-$(command -v recsys || { [ -x target/release/recsys ] && echo target/release/recsys; } || echo target/debug/recsys)}

"$recsys" certs --out "$dir/certs" --shards 2 --host etcd,gateway --if-missing
"$recsys" etcd-auth passwords --cluster recsys --secrets "$dir/etcd-users"

kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
files=()
for f in "$dir"/certs/*.pem "$dir"/certs/*.key; do
  [ "$(basename "$f")" = ca.key ] || files+=(--from-file="$f")
done
kubectl -n "$namespace" create secret generic recsys-tls "${files[@]}" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$namespace" create secret generic recsys-etcd-users --from-file="$dir/etcd-users" --dry-run=client -o yaml | kubectl apply -f -
if [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
  kubectl -n "$namespace" create secret generic recsys-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
    --dry-run=client -o yaml | kubectl apply -f -
  echo "secrets: recsys-s3 from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
fi
echo "secrets: recsys-tls and recsys-etcd-users in namespace $namespace (files in $dir)"
