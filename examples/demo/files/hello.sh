#!/bin/sh
# Shipped in examples/demo/files/ and served straight from the host file:
# ext4gen reads it only when a client reads its blocks.
echo "hello from an ext4 image that was never written to disk"
