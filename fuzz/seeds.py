#!/usr/bin/env python3
"""Write small seed inputs for the fuzz targets into CORPUS_ROOT/<target>/ (standard library only).

Each seed is a well-formed example of what the target parses (SMP answers on UDP and on a serial
console, ESP ROM loader packets in SLIP frames, ESP images, partition tables and OTA data, DFU and
DfuSe files, USB descriptors, SWUpdate archives, SWUpdate's status channel (WebSocket upgrade
answers, frames, status messages), CMS signatures, visit-log events, sync bodies, an audit archive),
so the fuzzer starts from the valid shapes and mutates from there.
"""
import base64, hashlib, io, json, os, struct, sys, tarfile, zlib

root = sys.argv[1]

def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# --- CBOR (the subset SMP answers use) ---------------------------------------------------------
def cbor(v):
    def head(major, n):
        if n < 24: return bytes([major << 5 | n])
        if n < 0x100: return bytes([major << 5 | 24, n])
        if n < 0x10000: return bytes([major << 5 | 25]) + struct.pack(">H", n)
        return bytes([major << 5 | 26]) + struct.pack(">I", n)
    if v is True: return b"\xf5"
    if v is False: return b"\xf4"
    if isinstance(v, int): return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, bytes): return head(2, len(v)) + v
    if isinstance(v, str): return head(3, len(v.encode())) + v.encode()
    if isinstance(v, list): return head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict): return head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)

def smp(op, group, id_, seq, body):
    b = cbor(body)
    return bytes([op | 1 << 3, 0]) + struct.pack(">HH", len(b), group) + bytes([seq, id_]) + b

def crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc

def console(packet):
    import base64
    raw = struct.pack(">H", len(packet) + 2) + packet + struct.pack(">H", crc16(packet))
    text = base64.b64encode(raw)
    out = b""
    for i in range(0, len(text), 124):
        out += (b"\x06\x09" if i == 0 else b"\x04\x14") + text[i:i + 124] + b"\n"
    return out

images = {"images": [{"image": 0, "slot": 0, "version": "1.2.3", "hash": bytes(range(32)),
                      "bootable": True, "pending": False, "confirmed": True, "active": True,
                      "permanent": False},
                     {"slot": 1, "version": "1.3.0", "hash": bytes(32), "bootable": True,
                      "pending": True}]}
answers = {
    "state": smp(1, 1, 0, 7, images),
    "upload": smp(3, 1, 1, 7, {"off": 4096, "match": True}),
    "error-v2": smp(3, 1, 1, 7, {"err": {"group": 1, "rc": 5}}),
    "error-v1": smp(3, 1, 1, 7, {"rc": 3}),
    "params": smp(1, 0, 6, 7, {"buf_size": 2048, "buf_count": 4}),
    "bootloader": smp(1, 0, 8, 7, {"bootloader": "MCUboot", "mode": 1}),
    "echo": smp(3, 0, 0, 7, {"r": "hello"}),
    "info": smp(1, 0, 7, 7, {"output": "Zephyr"}),
}
for name, p in answers.items():
    put("smp_frames", name + ".udp", b"\x40" + p)
    put("smp_frames", name + ".serial", b"\x11" + b"boot: noise\r\n" + console(p))

# --- ESP ROM loader over SLIP ---------------------------------------------------------------------
def slip(p):
    return b"\xc0" + p.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"
sync = struct.pack("<BBHI", 0, 0x08, 36, 0) + b"\x07\x07\x12\x20" + b"\x55" * 32
put("esp_slip", "sync.req", b"\x07" + slip(sync))
put("esp_slip", "sync.resp", b"\x03ets Jun  8 2016\r\n" + slip(struct.pack("<BBHI", 1, 0x08, 4, 0) + b"\x00\x00\x00\x00"))
put("esp_slip", "readreg.resp", b"\x20" + slip(struct.pack("<BBHI", 1, 0x0a, 4, 0x00f01d83) + b"\x00\x00\x00\x00"))
put("esp_slip", "md5.resp", b"\x05" + slip(struct.pack("<BBHI", 1, 0x13, 36, 0) + b"0123456789abcdef0123456789abcdef" + b"\x00\x00\x00\x00"))
put("esp_slip", "error.resp", b"\x01" + slip(struct.pack("<BBHI", 1, 0x02, 4, 0) + b"\x01\x05\x00\x00"))

# --- ESP images, partition tables, OTA data -------------------------------------------------------
def esp_image(chip, segs, sha=True, desc=False):
    h = bytes([0xE9, len(segs), 2, 0x20]) + struct.pack("<I", 0x40080000)
    h += bytes([0xEE, 0, 0, 0]) + struct.pack("<H", chip) + bytes([0]) + struct.pack("<HH", 0, 0xFFFF)
    h += bytes(4) + bytes([1 if sha else 0])
    out = bytearray(h)
    s = 0xEF
    for i, (addr, data) in enumerate(segs):
        if desc and i == 0:
            d = struct.pack("<II", 0xABCD5432, 0) + bytes(8) + b"1.0.0".ljust(32, b"\0")
            d += b"app".ljust(32, b"\0") + b"12:00:00".ljust(16, b"\0") + b"Jan  1 2026".ljust(16, b"\0")
            d += b"v5.2".ljust(32, b"\0") + bytes(32) + bytes(256 - 176)
            data = d + data
        out += struct.pack("<II", addr, len(data)) + data
        for b in data:
            s ^= b
    while len(out) % 16 != 15:
        out.append(0)
    out.append(s)
    if sha:
        out += hashlib.sha256(bytes(out)).digest()
    return bytes(out)

put("esp_image", "app-esp32.bin", esp_image(0, [(0x3F400020, b"rodata" * 10), (0x40080000, b"\x00" * 64)], desc=True))
put("esp_image", "boot-c3.bin", esp_image(5, [(0x403CE000, b"\x13\x00\x00\x00" * 8)], sha=False))

def part(name, t, st, off, size, flags=0):
    return b"\xaa\x50" + bytes([t, st]) + struct.pack("<II", off, size) + name.encode().ljust(16, b"\0") + struct.pack("<I", flags)
entries = part("nvs", 1, 2, 0x9000, 0x4000) + part("otadata", 1, 0, 0xD000, 0x2000) + \
    part("phy_init", 1, 1, 0xF000, 0x1000) + part("ota_0", 0, 0x10, 0x10000, 0x100000) + \
    part("ota_1", 0, 0x11, 0x110000, 0x100000)
table = entries + b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(entries).digest() + b"\xff" * 32
put("esp_image", "partitions.bin", table + b"\xff" * (0xC00 - len(table)))
def ota_entry(seq, state):
    # esp_rom_crc32_le(UINT32_MAX, seq): zlib's crc32 continued from that value.
    c = zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF)
    return struct.pack("<I", seq) + b"\xff" * 20 + struct.pack("<II", state, c)
put("esp_image", "otadata.bin", ota_entry(2, 2).ljust(0x1000, b"\xff") + ota_entry(1, 2).ljust(0x1000, b"\xff"))

# --- DFU files ------------------------------------------------------------------------------------
def dfu_suffix(body, bcd_dfu, vid=0x0483, pid=0xdf11):
    s = body + struct.pack("<HHHH", 0xFFFF, pid, vid, bcd_dfu) + b"UFD" + bytes([16])
    # dfu-util stores the complement of the CRC-32.
    return s + struct.pack("<I", zlib.crc32(s) ^ 0xFFFFFFFF)
def dfuse(targets):
    body = b""
    for alt, name, elems in targets:
        data = b"".join(struct.pack("<II", a, len(d)) + d for a, d in elems)
        body += b"Target" + bytes([alt]) + struct.pack("<I", 1 if name else 0) + name.encode().ljust(255, b"\0")
        body += struct.pack("<II", len(data), len(elems)) + data
    pre = b"DfuSe\x01" + struct.pack("<I", 11 + len(body) + 16) + bytes([len(targets)])
    return dfu_suffix(pre + body, 0x011A)
put("dfu_file", "plain.dfu", dfu_suffix(b"\x00\x01firmware" * 8, 0x0100))
put("dfu_file", "dfuse.dfu", dfuse([(0, "Internal Flash", [(0x08000000, b"\x01" * 64), (0x08004000, b"\x02" * 16)]), (1, "", [(0x1FFF7800, b"\xff" * 16)])]))

# --- USB descriptors and DFU answers --------------------------------------------------------------
dev = bytes([18, 1]) + struct.pack("<H", 0x0200) + bytes([0, 0, 0, 64]) + struct.pack("<HHH", 0x0483, 0xdf11, 0x2200) + bytes([1, 2, 3, 1])
func = bytes([9, 0x21, 0x0B]) + struct.pack("<HHH", 255, 2048, 0x011A)
ifaces = b"".join(bytes([9, 4, 0, alt, 0, 0xFE, 1, 2, 4 + alt]) for alt in range(2))
cfg_body = ifaces + func
cfg = bytes([9, 2]) + struct.pack("<H", 9 + len(cfg_body)) + bytes([1, 1, 0, 0xC0, 50]) + cfg_body
def string(s):
    b = s.encode("utf-16-le")
    return bytes([len(b) + 2, 3]) + b
put("dfu_descriptors", "device.bin", dev)
put("dfu_descriptors", "config.bin", cfg)
put("dfu_descriptors", "functional.bin", func)
put("dfu_descriptors", "status.bin", bytes([0, 100, 0, 0, 5, 0]))
put("dfu_descriptors", "memmap.str", string("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"))
put("dfu_descriptors", "memmap.txt", "@Option Bytes  /0x1FFF7800/01*040 e")

# --- SWUpdate archives ----------------------------------------------------------------------------
def cpio(members):
    out = bytearray()
    for name, data in members + [("TRAILER!!!", b"")]:
        fields = [0, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        while len(out) % 4: out.append(0)
        out += data
        while len(out) % 4: out.append(0)
    return bytes(out)
rootfs = b"rootfs image " * 20
desc = ('software =\n{\n\tversion = "2.1.0";\n\thardware-compatibility = [ "1.0", "rev-b" ];\n'
        '\timages: (\n\t{\n\t\tfilename = "rootfs.img";\n\t\ttype = "raw";\n\t\tdevice = "/dev/mmcblk0p2";\n'
        '\t\tsha256 = "%s";\n\t}\n\t);\n}\n' % hashlib.sha256(rootfs).hexdigest()).encode()
board = (b'software = { version = "1.0"; board: { hardware-compatibility = ["1.0"]; '
         b'images = ( { filename = "a"; sha256 = "' + b"00" * 32 + b'"; } ); }; };')
jdesc = json.dumps({"software": {"version": "1.0", "hardware-compatibility": ["1.0"],
                                 "files": [{"filename": "rootfs.img", "type": "rawfile",
                                            "sha256": hashlib.sha256(rootfs).hexdigest()}]}}).encode()
put("swu_archive", "image.swu", cpio([("sw-description", desc), ("sw-description.sig", b"\x30\x82sig"), ("rootfs.img", rootfs)]))
put("swu_archive", "json.swu", cpio([("sw-description", jdesc), ("sw-description.sig", b"\x30\x82sig"), ("rootfs.img", rootfs)]))
put("swu_archive", "description.cfg", desc)
put("swu_archive", "board.cfg", board)
put("swu_archive", "description.json", jdesc)
put("swu_archive", "packed", b"C" + desc + b"\xff" + b"sig" + b"\xff" + b"f1 data")

# --- SWUpdate's status channel: the WebSocket upgrade answer, frames, status messages ------------
# The key is RFC 6455's example, which the target sends; this is the accept it asks for.
accept = base64.b64encode(hashlib.sha1(
    b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
assert accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
def ws_frame(first, payload, mask=None):
    n = len(payload)
    head = bytes([first]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n) if n < 0x10000
                             else bytes([127]) + struct.pack(">Q", n))
    if mask is None:
        return head + payload
    head = head[:1] + bytes([head[1] | 0x80]) + head[2:]
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
# As SWUpdate's mongoose interface writes them: every field a string, CRLF and tabs.
def ws_json(fields):
    return ("{\r\n" + ",\r\n".join('\t"%s": "%s"' % kv for kv in fields) + "\r\n}\r\n").encode()
status_msgs = [ws_json([("type", "status"), ("status", "START"), ("source", "WEBSERVER")]),
               ws_json([("type", "step"), ("number", "1"), ("step", "1"), ("name", "rootfs.img"), ("percent", "40")]),
               ws_json([("type", "message"), ("level", "3"), ("text", "[install] hardware not compatible")]),
               ws_json([("type", "status"), ("status", "FAILURE")]),
               ws_json([("type", "status"), ("status", "SUCCESS")])]
frames = b"".join(ws_frame(0x81, m) for m in status_msgs)
frames += ws_frame(0x89, b"ping") + ws_frame(0x01, status_msgs[0][:10]) + ws_frame(0x80, status_msgs[0][10:])
frames += ws_frame(0x81, b"x" * 300) + ws_frame(0x81, b"masked", b"\x37\xfa\x21\x3d") + ws_frame(0x88, b"")
switched = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
put("swupdate_ws", "switched", switched + frames)
put("swupdate_ws", "unauthorized", b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="gw", nonce="1"\r\n\r\n')
put("swupdate_ws", "frames", frames)
for i, m in enumerate(status_msgs):
    put("swupdate_ws", "status%d.json" % i, m)

# --- CMS signatures over sw-description (the target makes its own valid one) ------------------------
def der(tag, body):
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + struct.pack(">H", n)
    return bytes([tag]) + length + body
def oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        enc = [p & 0x7F]
        p >>= 7
        while p:
            enc.insert(0, 0x80 | p & 0x7F)
            p >>= 7
        out += bytes(enc)
    return der(0x06, out)
sha256_alg = der(0x30, oid("2.16.840.1.101.3.4.2.1"))
signer = der(0x30, der(0x02, b"\x01") + der(0x30, der(0x30, der(0x31, der(0x30, oid("2.5.4.3") + der(0x0C, b"Vendor"))))
                                              + der(0x02, b"\x07"))
             + sha256_alg + der(0x30, oid("1.2.840.113549.1.1.1")) + der(0x04, b"\x00" * 256))
signed_data = der(0x30, der(0x02, b"\x01") + der(0x31, sha256_alg) + der(0x30, oid("1.2.840.113549.1.7.1"))
                  + der(0x31, signer))
put("swu_cms", "skeleton.der", der(0x30, oid("1.2.840.113549.1.7.2") + der(0xA0, signed_data)))
put("swu_cms", "valid", b"S")
put("swu_cms", "flipped", b"S" + b"\x01\x00\x40\x01")
put("swu_cms", "cut", b"S" + b"\x04\x01\x00\x00")
put("swu_cms", "edits", b"S" + b"\x00\x00\x05\x31" + b"\x02\x00\x10\x00" + b"\x03\x02\x00\x00")

# --- visit-log events, sync bodies, audit archives ------------------------------------------------
log_id = "01890a5d-ac96-774b-bcce-b302099a8057"
def event(seq, kind):
    e = {"id": "01890a5d-ac96-774b-bcce-b302099a80%02d" % seq, "log_id": log_id, "seq": seq,
         "time": "2026-03-01T10:00:%02dZ" % seq, "time_source": "system_clock", "signer": "ab" * 32,
         "visit_id": "01890a5d-ac96-774b-bcce-b302099a8000", "device": "dev-1",
         "prev_hash": "00" * 32, "signature": "cd" * 64}
    e.update(kind)
    return e
events = [event(1, {"kind": "visit_opened", "site": "s1", "work_order": "wo-1"}),
          event(2, {"kind": "note", "text": "arrived"}),
          event(3, {"kind": "flash_started", "bundle_id": "b", "from_version": "1.0.0",
                    "to_version": "2.1.0", "image_sha256": "00" * 32, "bytes": 4096}),
          event(4, {"kind": "device_command", "command": "upload", "image_sha256": None}),
          event(5, {"kind": "log_started", "previous": {"log_id": log_id, "seq": 9, "hash": "00" * 32},
                    "why": "new laptop"})]
for i, e in enumerate(events):
    put("visit_event", "event%d.json" % i, json.dumps(e))
    put("sync_wire", "event%d.json" % i, json.dumps([e]))
put("sync_wire", "push.json", json.dumps({"events": events}))
cp = {"log_id": log_id, "last_seq": 2, "last_hash": "ef" * 32, "server_key": "12" * 32, "signature": "34" * 64}
put("sync_wire", "ack.json", json.dumps({"stored": [events[0]["id"]], "retryable": [], "rejected": [
    {"id": events[1]["id"], "log_id": log_id, "seq": 2, "code": "bad_signature", "reason": "edited"}],
    "checkpoints": [cp], "not_applied": []}))
put("sync_wire", "pull.json", json.dumps({
    "server_time": "2026-03-01T09:00:00Z", "server_key": "12" * 32, "technician_id": "tech-1",
    "sites": [{"id": "s1", "name": "Plant", "address": None}],
    "devices": [{"id": "dev-1", "site_id": "s1", "model": "S-100", "failures": 0}],
    "work_orders": [{"id": "wo-1", "site_id": "s1", "title": "Patch", "devices": ["dev-1"]}],
    "catalog": [{"bundle_id": "b", "version": "2.1.0", "manifest": {"a": 1.5}, "sha256": "00" * 32,
                 "size": 10, "published_at": "2026-01-01T00:00:00Z"}],
    "trust_store": None, "catalog_listing": None,
    "credentials": [{"device_id": "dev-1", "kind": "password", "ephemeral_key": "56" * 32,
                     "nonce": "78" * 12, "ciphertext": "9a" * 32}]}))
put("sync_wire", "error.json", json.dumps({"code": "unauthorized", "message": "no token"}))
def tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files:
            info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()
manifest = json.dumps({"format": "fieldpatch-audit/v1", "technician_key": "ab" * 32}, sort_keys=True, separators=(",", ":")).encode()
files = [("manifest.json", manifest), ("technician.pub", b"ab" * 32 + b"\n"),
         ("events.jsonl", b"".join(json.dumps(e).encode() + b"\n" for e in events)),
         ("devices.csv", b"device,serial\n"), ("manifest.sig", b"cd" * 64 + b"\n"),
         ("report.html", b"<html></html>"), ("report.pdf", b"%PDF-1.4\n")]
put("audit_archive", "export.tar", tar(files))
put("audit_archive", "packed", b"P" + b"\xff".join(d for _, d in files[:5]))
put("audit_archive", "built", b"B\x00\x10\x01" + b"\n".join(json.dumps(e).encode() for e in events))
