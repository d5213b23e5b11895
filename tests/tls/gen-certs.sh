#!/bin/sh
# Generate the throw-away PKI for the TLS tests into $1: a test CA, a second
# CA the client does not trust, and server certificates that are valid,
# for another host name, self-signed and expired.
set -eu

out=${1:?usage: gen-certs.sh OUTDIR}
rm -rf "$out"
mkdir -p "$out/newcerts"
cd "$out"
: > index.txt
echo 1000 > serial

cat > ca.cnf <<CNF
[ ca ]
default_ca = testca

[ testca ]
dir = .
database = ./index.txt
new_certs_dir = ./newcerts
serial = ./serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = dn
prompt = no

[ dn ]
CN = unused

[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ localhost ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1

[ selfsigned ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1

[ othername ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:other.example
CNF

ossl() {
    openssl "$@" 2>>openssl.log
}

newkey() {
    ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"
}

# CAs: the trusted one and an unrelated one.
for ca in ca otherca; do
    newkey $ca.key
    ossl req -config ca.cnf -new -x509 -key $ca.key -out $ca.crt -days 30 \
        -subj "/CN=mailpool test $ca" -extensions ca_ext
done

newkey server.key

# Leaf certificates signed by the test CA; the expired one is back-dated
# with openssl ca -startdate/-enddate.
sign() { # name CN extensions [openssl ca date options...]
    name=$1 cn=$2 ext=$3
    shift 3
    ossl req -config ca.cnf -new -key server.key -subj "/CN=$cn" -out $name.csr
    ossl ca -config ca.cnf -batch -notext -keyfile ca.key -cert ca.crt \
        -in $name.csr -out $name.crt -extensions $ext "$@"
}
sign server localhost localhost -days 30
sign wrongname other.example othername -days 30
sign expired localhost localhost -startdate 20200101000000Z -enddate 20200201000000Z

ossl req -config ca.cnf -new -x509 -key server.key -out selfsigned.crt -days 30 \
    -subj "/CN=localhost" -extensions selfsigned

# pin_sha256 values: base64 SHA-256 of the DER SubjectPublicKeyInfo.
for k in server otherca; do
    openssl pkey -in $k.key -pubout -outform DER 2>>openssl.log |
        openssl dgst -sha256 -binary | openssl base64 -A > $k.pin
done

for c in ca otherca server wrongname expired selfsigned; do
    test -s $c.crt
done
echo "certificates in $out"
