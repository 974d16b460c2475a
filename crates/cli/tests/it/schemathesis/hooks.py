# Code archives are sent as the raw bytes schemathesis generates for a binary body.
import schemathesis

schemathesis.serializer.alias("application/zip", "application/octet-stream")
