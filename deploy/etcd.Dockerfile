# etcd for the compose cluster, from Debian's packages (the same etcd 3.4 the
# discovery tests run). Build: docker build -f deploy/etcd.Dockerfile -t recsys-etcd:latest deploy
# deploy/offline-images.sh makes an image of the same layout and tag without pulling.
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 recsys \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /sbin/nologin recsys \
 && mkdir -p /var/lib/etcd /secrets && chown 65532:65532 /var/lib/etcd /secrets
USER 65532:65532
WORKDIR /var/lib/etcd
ENV ETCDCTL_API=3
LABEL org.opencontainers.image.title=recsys-etcd recsys.image.build=dockerfile
CMD ["etcd", "--data-dir", "/var/lib/etcd/data"]
