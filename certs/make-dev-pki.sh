#!/usr/bin/env bash
# Makes a development PKI by hand with the openssl command-line tool: a CA,
# an apiserver certificate for localhost/127.0.0.1/::1, and a client
# certificate for user "dev" in group "developers". The tests and
# `kubegate demo` make their own PKI in memory; this is for trying
# kubegate's TLS settings against other servers by hand.
#
# Usage: certs/make-dev-pki.sh [DIR]   (default: certs/dev, which git ignores)
set -euo pipefail
dir=${1:-"$(dirname "$0")/dev"}
mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=kubegate-dev-ca" -keyout ca.key -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
  -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out server.crt \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n')

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=dev/O=developers" \
  -keyout client.key -out client.csr
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out client.crt \
  -extfile <(printf 'extendedKeyUsage=clientAuth\n')

rm -f ./*.csr ./*.srl
echo "wrote $(pwd): ca.crt, server.{crt,key}, client.{crt,key}"
