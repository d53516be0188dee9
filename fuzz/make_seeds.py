#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/ from the project's own example
data (scenario files, the shipped manifest, the event schemas, WHMCS and Salesforce answers as
the fakes and tests give them). Run from anywhere: `python3 fuzz/make_seeds.py`. Re-running
rewrites the same files."""
import hashlib, json, pathlib, re, struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def status(code, body):
    return struct.pack(">H", code) + (body.encode() if isinstance(body, str) else body)


# --- replay_id
for i, t in enumerate(["123456", "0", "18446744073709551615", "hex:010203", " 42 \n",
                       "hex:0000000000000001", "hex:", "-1", "18446744073709551616"]):
    write("replay_id", f"seed-{i}", t)

# --- avro: the shipped OrderProvisionRequested__e schemas (host/src/sandbox/mod.rs)
sandbox = (ROOT / "host/src/sandbox/mod.rs").read_text()
schemas = re.findall(r'r#"(\{"type":"record","name":"OrderProvisionRequested__e".*?)"#', sandbox)
assert len(schemas) == 2, schemas
avro_decode_rs = (ROOT / "fuzz/fuzz_targets/avro_decode.rs").read_text()
wide = re.search(r'const WIDE: &str = r#"(.*?)"#;', avro_decode_rs, re.S).group(1)
for i, s in enumerate(schemas + [wide]):
    write("avro_schema", f"schema-{i}.json", s)
# The recursive-record finding (docs/fuzzing.md): now refused by parse_schema.
write("avro_schema", "recursive.json", '{"type":"record","name":"R","fields":[{"name":"a","type":"R"}]}')
write("avro_schema", "enum.json", '{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}}]}')


def zigzag(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s):
    b = s.encode()
    return zigzag(len(b)) + b


v1 = zigzag(1767225600000) + string("005xx000001X8UzAAK") + zigzag(1) + string("801xx000003DIloAAG")
v1_null = zigzag(1767225600000) + string("005xx000001X8UzAAK") + zigzag(0)
v2 = v1 + zigzag(1) + string("portal")
write("avro_decode", "v1-order", b"\x00" + v1)
write("avro_decode", "v1-null-order", b"\x00" + v1_null)
write("avro_decode", "v2-order-source", b"\x01" + v2)
write("avro_decode", "v2-null-source", b"\x01" + v1 + zigzag(0))
wide_payload = (b"\x01" + zigzag(-5) + zigzag(1 << 40) + struct.pack("<f", 1.5) + struct.pack("<d", -2.25)
                + string("héllo") + zigzag(3) + b"\x00\x01\x02" + b"ABCD" + zigzag(2)
                + zigzag(2) + zigzag(7) + zigzag(-7) + zigzag(0)
                + zigzag(1) + string("k") + zigzag(1) + string("v") + zigzag(0)
                + zigzag(1767225600000) + zigzag(2) + zigzag(99)
                + zigzag(1) + struct.pack("<d", 0.5) + zigzag(1) + string("y") + zigzag(0))
write("avro_decode", "wide", b"\x02" + wide_payload)

# --- soql: the component's queries and the fake org's own test queries
soql = set()
for path in list((ROOT / "host").rglob("*.rs")) + list((ROOT / "components").rglob("*.rs")):
    if "target" in path.parts:
        continue
    soql.update(re.findall(r'"(SELECT[^"\\]*)"', path.read_text()))
soql.update([
    "SELECT Id, OrderNumber, Status, AccountId, Pricebook2Id, Activation_Status__c, "
    "WHMCS_Order_ID__c, Account.WHMCS_Client_ID__c FROM Order WHERE Id = '801x\\''",
    "SELECT Id, Quantity, UnitPrice, Product2Id, PricebookEntryId, Billing_Cycle__c, "
    "Product2.Name, Product2.WH_Product_ID__c FROM OrderItem WHERE OrderId = '801'",
    "SELECT Id, Activation_Status__c FROM Order WHERE WHMCS_Order_ID__c IN ('1042', '1043') ORDER BY Id DESC LIMIT 5",
])
# Past the parser's nesting and condition limits (the stack-overflow finding, docs/fuzzing.md).
soql.update([
    "SELECT Id FROM Order WHERE " + "NOT " * 40 + "Id = '1'",
    "SELECT Id FROM Order WHERE " + "(" * 40 + "Id = '1'" + ")" * 40,
    "SELECT " + "(SELECT " * 40 + "Id FROM OrderItems" + ")" * 40 + " FROM Order",
    "SELECT Id FROM Order WHERE " + "Id = '1' AND " * 1000 + "Id = '1'",
])
for q in sorted(soql):
    write("soql", hashlib.sha1(q.encode()).hexdigest()[:12], q)
    write("policy", "q-" + hashlib.sha1(q.encode()).hexdigest()[:12], b"\0" + q.encode())

# --- scenario: every shipped scenario file and the shared seed
for path in sorted((ROOT / "tests/scenarios").glob("*.toml")):
    write("scenario", path.name, path.read_bytes())

# --- manifest: the shipped manifests, as text and embedded in a bare component
def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def custom(name, payload):
    contents = leb(len(name)) + name + payload
    return b"\x00" + leb(len(contents)) + contents


PREAMBLE = b"\0asm\x0d\0\x01\0"
for name, path in [("fulfillment", "components/fulfillment/component.toml"),
                   ("template", "host/templates/component/component.toml")]:
    text = (ROOT / path).read_bytes()
    write("manifest", f"{name}.toml", text)
    write("manifest", f"{name}.wasm", PREAMBLE + custom(b"producers", b"\x00") + custom(b"fulfilld-manifest", text))
write("manifest", "bare.wasm", PREAMBLE)
write("manifest", "module.wasm", b"\0asm\x01\0\0\0")

# --- policy: the documented default, the tests' policies, with a query after a NUL byte
default_policy = ('billing_actions = ["GetPayMethods", "GetClientsDetails", "AddOrder", "AcceptOrder", "GetOrders"]\n'
                  '[update]\nOrder = ["Activation_Status__c", "WHMCS_Order_ID__c", "Activation_Error_Code__c", "Activation_Error_Message__c"]\n')
write("policy", "default", default_policy + "\0SELECT Id FROM Order WHERE AccountId IN (SELECT Id FROM Account)")
write("policy", "limited", default_policy.replace("[update]", 'query = ["Order", "OrderItem"]\n[update]')
      + "\0SELECT Id, (SELECT Id FROM OrderItems) FROM Order")
write("policy", "unknown-key", 'billing_action = ["AddOrder"]\0SELECT Id FROM Account')

# --- whmcs_classify: answers shaped like the fake WHMCS's (host/src/fake/whmcs.rs)
answers = [
    (200, {"result": "success", "clientid": 7, "paymethods": [{"id": 1, "type": "RemoteCreditCard", "description": "Visa", "gateway_name": "stripe", "contact_type": "Client", "contact_id": 7}]}),
    (200, {"result": "success", "orderid": 1042, "serviceids": "11,12", "productids": "11,12", "addonids": "", "domainids": "", "invoiceid": 9}),
    (200, {"result": "error", "message": "Client Not Found"}),
    (200, {"result": "success", "userid": 7, "client": {"id": 7, "email": "a@example.com", "defaultgateway": ""}}),
    (403, {"result": "error", "message": "Invalid IP 10.0.0.9"}),
    (200, "<html>maintenance</html>"),
    (503, ""),
    (200, '{"result": "success"'),
]
for i, (code, body) in enumerate(answers):
    write("whmcs_classify", f"answer-{i}", status(code, body if isinstance(body, str) else json.dumps(body)))

# --- salesforce_classify: error answers as Salesforce sends them (host/src/salesforce/rest.rs tests)
sf = [
    (400, '[{"message":"unexpected token: \'FORM\'","errorCode":"MALFORMED_QUERY","fields":[]}]'),
    (404, '[{"message":"gone","errorCode":"NOT_FOUND"}]'),
    (503, '[{"message":"down","errorCode":"SERVER_UNAVAILABLE"}]'),
    (429, ""),
    (403, "<html>blocked</html>"),
    (401, '[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]'),
    (400, '{"message":"lone object","errorCode":"INVALID_FIELD"}'),
]
for i, (code, body) in enumerate(sf):
    write("salesforce_classify", f"answer-{i}", status(code, body))

# --- admin_upload: Content-Type line, then a multipart body
def multipart(boundary, parts):
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


happy = (ROOT / "tests/scenarios/happy-path.toml").read_bytes()
b = "fulfilldBoundary7MA4YWxk"
ct = f"multipart/form-data; boundary={b}\n".encode()
write("admin_upload", "component-only", ct + multipart(b, [("component", "fulfillment.wasm", PREAMBLE)]))
write("admin_upload", "signed-with-suite", ct + multipart(b, [
    ("component", "fulfillment.wasm", PREAMBLE + custom(b"fulfilld-manifest", b"[component]\n")),
    ("signature", None, b"bm90IGEgcmVhbCBzaWduYXR1cmU="),
    ("scenario", "happy-path.toml", happy),
    ("scenario", "_seed.toml", b"[org]\n"),
]))
write("admin_upload", "no-component", ct + multipart(b, [("signature", None, b"x")]))
write("admin_upload", "unexpected-part", ct + multipart(b, [("component", "a.wasm", b"x"), ("other", None, b"y")]))
write("admin_upload", "scenario-without-file-name", ct + multipart(b, [("component", "a.wasm", b"x"), ("scenario", None, b"y")]))
