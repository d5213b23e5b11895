#!/bin/sh
# Regenerates the test certificates in this directory with the openssl CLI.
# The outputs are committed; run this only to replace them (e.g. new key sizes).
# See README.md for what each certificate is for.
set -eu

cd "$(dirname "$0")"
DAYS=20000 # about 55 years: "never" expires within the life of the test suite
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() {
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

# Extension sections used when the CA signs; one per leaf certificate.
cat >"$tmp/ext.cnf" <<'EOF'
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[wronghost_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

EOF

# Test CA
newkey ca.key
openssl req -new -x509 -key ca.key -out ca.pem -days "$DAYS" -sha256 \
    -subj "/O=mailpool tests/CN=mailpool test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"

# sign NAME CN EXTSECTION: CA-signed leaf certificate valid from now on
sign() {
    newkey "$1.key"
    openssl req -new -key "$1.key" -subj "/O=mailpool tests/CN=$2" -out "$tmp/$1.csr"
    openssl x509 -req -in "$tmp/$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -CAserial "$tmp/ca.srl" -days "$DAYS" -sha256 \
        -extfile "$tmp/ext.cnf" -extensions "$3" -out "$1.pem" 2>/dev/null
}

sign server localhost server_ext
sign wronghost wrong.example wronghost_ext
# TLS client certificate (tls.client_cert) for servers that demand one
sign client "mailpool test client" client_ext

# Self-signed "localhost"
newkey selfsigned.key
openssl req -new -x509 -key selfsigned.key -out selfsigned.pem -days "$DAYS" -sha256 \
    -subj "/O=mailpool tests/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "extendedKeyUsage=serverAuth"

# Expired: only "openssl ca" lets us set a validity window entirely in the past,
# and it needs a (throwaway) CA database.
mkdir "$tmp/db" "$tmp/db/new"
: >"$tmp/db/index.txt"
echo 1000 >"$tmp/db/serial"
cat >"$tmp/ca.cnf" <<EOF
[ca]
default_ca = testca
[testca]
dir = $tmp/db
database = $tmp/db/index.txt
serial = $tmp/db/serial
new_certs_dir = $tmp/db/new
certificate = $PWD/ca.pem
private_key = $PWD/ca.key
default_md = sha256
policy = anything
copy_extensions = none
unique_subject = no
x509_extensions = expired_ext
[anything]
organizationName = optional
commonName = supplied
[expired_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
EOF
newkey expired.key
openssl req -new -key expired.key -subj "/O=mailpool tests/CN=localhost" -out "$tmp/expired.csr"
openssl ca -batch -config "$tmp/ca.cnf" -in "$tmp/expired.csr" -out "$tmp/expired.full" \
    -startdate 20000101000000Z -enddate 20010101000000Z -notext 2>/dev/null
openssl x509 -in "$tmp/expired.full" -out expired.pem

rm -f ca.srl
echo "certificates written to $PWD"
