#!/usr/bin/env python3
"""Builds corpus.jsonl: labelled texts for the PII detectors.

Each line is {"text": ..., "expect": [{"kind": ..., "value": ...}], "group": ...}.
Valid identifiers are made here with their own check-digit arithmetic (written
independently of the Rust validators); hard negatives are texts that must come out
untouched. Run it again only to change the corpus: the output is committed, and the
seed makes it reproducible.
"""

import json
import random
import string

rng = random.Random(20261124)
cases = []


def case(group, text, *expect):
    cases.append({"group": group, "text": text,
                  "expect": [{"kind": k, "value": v} for k, v in expect]})


# --- check digits ---------------------------------------------------------------

def id_check(first17):
    w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return "10X98765432"[sum(int(a) * b for a, b in zip(first17, w)) % 11]


REGIONS = ["110101", "110105", "310104", "440106", "440305", "330106", "510107",
           "320102", "420102", "610113", "370202", "210202", "500103", "350203",
           "130102", "410105", "430103", "530102", "650102", "230103"]


def rand_date(lo=1950, hi=2015):
    y = rng.randint(lo, hi)
    m = rng.randint(1, 12)
    d = rng.randint(1, 28)
    return y, m, d


def id18(valid=True):
    y, m, d = rand_date()
    body = f"{rng.choice(REGIONS)}{y:04d}{m:02d}{d:02d}{rng.randint(0, 999):03d}"
    c = id_check(body)
    if not valid:
        c = rng.choice([x for x in "0123456789X" if x != c])
    return body + c


def id15():
    y, m, d = rand_date(1930, 1985)
    return f"{rng.choice(REGIONS)}{y % 100:02d}{m:02d}{d:02d}{rng.randint(0, 999):03d}"


def luhn_digit(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch)
        if i % 2 == 0:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return str((10 - total % 10) % 10)


def card(prefix, length, valid=True):
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    c = luhn_digit(body)
    if not valid:
        c = str((int(c) + rng.randint(1, 9)) % 10)
    return body + c


def grouped(number, sep, sizes=None):
    sizes = sizes or [4] * (len(number) // 4) + ([len(number) % 4] if len(number) % 4 else [])
    out, at = [], 0
    for s in sizes:
        out.append(number[at:at + s])
        at += s
    return sep.join(out)


USCC = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def org_code():
    body = "".join(rng.choice(string.digits + "ABCDEFGHJKLMNPQRTUWXY") for _ in range(8))
    vals = [int(c) if c.isdigit() else ord(c) - 55 for c in body]
    s = sum(v * w for v, w in zip(vals, [3, 7, 9, 10, 5, 8, 4, 2]))
    c = 11 - s % 11
    return body + ("X" if c == 10 else "0" if c == 11 else str(c))


def credit_code():
    head = rng.choice("159") + rng.choice("123") + rng.choice(REGIONS)
    body = head + org_code()
    w = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]
    s = sum(USCC.index(c) * x for c, x in zip(body, w))
    return body + USCC[(31 - s % 31) % 31]


def mobile():
    return rng.choice(["13", "15", "17", "18", "19", "16", "14"]) + str(rng.randint(0, 9)) + \
        "".join(rng.choice(string.digits) for _ in range(8))


def digits(n):
    return "".join(rng.choice(string.digits) for _ in range(n))


# --- positives ------------------------------------------------------------------

for _ in range(12):
    m = mobile()
    tpl = rng.choice(["我的手机号是{}，请回电。", "Call me at {} tomorrow.", "联系电话:{}",
                      "客户张三（{}）反映订单未到", "phone={}&name=li"])
    case("mobile", tpl.format(m), ("mobile", m))
for fmt in ["{} {} {}", "{}-{}-{}"]:
    for _ in range(5):
        m = mobile()
        v = fmt.format(m[:3], m[3:7], m[7:])
        case("mobile", f"手机 {v} 已验证", ("mobile", v))
for prefix in ["+86", "+86 ", "0086", "0086-", "86 ", "+86-", "86"]:
    m = mobile()
    v = prefix + m
    case("mobile", f"请拨打{v}咨询", ("mobile", v))
    case("mobile", f"Reach the customer on {v}.", ("mobile", v))

for area, local in [("010", 8), ("021", 8), ("020", 8), ("0755", 8), ("0571", 8),
                    ("0731", 7), ("0898", 7), ("028", 8), ("0512", 8), ("023", 8)]:
    num = str(rng.randint(2, 9)) + digits(local - 1)
    for form in ["{}-{}", "({}){}", "（{}）{}", "{} {}"]:
        v = form.format(area, num)
        case("landline", f"办公电话：{v}，工作日可打", ("landline", v))
case("landline", "总机 010-62345678-8021 转人工", ("landline", "010-62345678-8021"))
case("landline", "Front desk: 021-52341234转305", ("landline", "021-52341234转305"))
case("bank_card", "卡号 4111-1111-1111-1111 2025年到期", ("bank_card", "4111-1111-1111-1111"))

for _ in range(30):
    v = id18()
    tpl = rng.choice(["身份证号{}", "ID card: {}.", "申请人身份证号码为 {}，住址略。",
                      "证件号码：{}", "citizen id={};"])
    case("id_card", tpl.format(v), ("id_card", v))
for _ in range(5):
    v = id18().replace("X", "x")
    case("id_card", f"身份证 {v} 已核验", ("id_card", v))
for _ in range(8):
    v = id15()
    case("id_card", f"旧身份证号 {v} 需换领", ("id_card", v))

for prefix, length, name in [("62", 16, "unionpay16"), ("62", 19, "unionpay19"),
                             ("6013", 19, "boc"), ("9558", 19, "icbc"),
                             ("4", 16, "visa"), ("51", 16, "mc"), ("55", 16, "mc"),
                             ("2221", 16, "mc2"), ("34", 15, "amex"), ("37", 15, "amex"),
                             ("3530", 16, "jcb"), ("6228", 19, "abc")]:
    for sep in ["", " ", "-"]:
        v = card(prefix, length)
        if sep:
            sizes = [4, 6, 5] if length == 15 else None
            v = grouped(v, sep, sizes)
        tpl = rng.choice(["银行卡号：{}", "Card number {} expires 12/28", "请往{}转账",
                          "refund to card {}, thanks"])
        case("bank_card", tpl.format(v), ("bank_card", v))

for _ in range(20):
    v = credit_code()
    tpl = rng.choice(["统一社会信用代码：{}", "USCC {} (registered)", "企业信用代码{}。"])
    case("credit_code", tpl.format(v), ("credit_code", v))
case("credit_code", "阿里巴巴（中国）有限公司 91330100716105852F", ("credit_code", "91330100716105852F"))

for _ in range(6):
    v = rng.choice(["E", "G"]) + digits(8)
    case("passport", f"护照号码 {v}，有效期十年", ("passport", v))
for _ in range(4):
    v = "E" + rng.choice("ABCDFGHJKLMN") + digits(7)
    case("passport", f"passport no. {v}", ("passport", v))
for letter in "CWHMT":
    v = letter + digits(8)
    case("travel_permit", f"通行证号码：{v}", ("travel_permit", v))
for _ in range(3):
    v = "C" + rng.choice("ABCDEFGH") + digits(7)
    case("travel_permit", f"往来港澳通行证 {v} 办理签注", ("travel_permit", v))

for v in ["zhangsan@example.com", "li.si+billing@corp.example.cn", "wang_wu@163.com",
          "13812345678@qq.com", "a.b-c@sub.domain.org", "ceo@acme.co.uk",
          "support@ragway.io", "x@y.cn", "first.last@mail.tsinghua.edu.cn",
          "service-desk@bank.com.cn", "USER@EXAMPLE.COM"]:
    case("email", f"请发邮件到 {v} 联系", ("email", v))
    case("email", f"Mail: <{v}>", ("email", v))

for v in ["192.168.1.20", "10.0.0.1", "8.8.8.8", "172.16.254.3", "203.0.113.77",
          "255.255.255.0"]:
    case("ip_address", f"服务器IP {v} 无法访问", ("ip_address", v))
for v in ["2001:db8::ff00:42:8329", "fe80::1ff:fe23:4567:890a", "2408:8207:2420:5f0::1",
          "fe80::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"]:
    case("ip_address", f"client address {v} blocked", ("ip_address", v))

for v in ["sk-proj-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(40)),
          "sk-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(48)),
          "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
          "LTAI5t" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(16)),
          "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36)),
          "AIza" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(35))]:
    case("secret", f"我的密钥是 {v} 别外传", ("secret", v))
    case("secret", f"export OPENAI_API_KEY={v}", ("secret", v))
tok = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
case("secret", f"curl -H 'Authorization: Bearer {tok}' https://api", ("secret", tok))
case("secret", "连接串 mysql://root:Passw0rd!@10.1.2.3:3306/db",
     ("secret", "root:Passw0rd!"), ("ip_address", "10.1.2.3"))
case("secret", "postgres://app:s3cr3t@db.internal/app", ("secret", "app:s3cr3t"))
case("secret", "redis://default:p@ss@cache:6379/0", ("secret", "default:p@ss"))
jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
case("secret", f"token {jwt} expired", ("secret", jwt))

for v in ["+1 415 555 2671", "+442079460958", "+81-3-1234-5678", "+61 2 9876 5432",
          "+33 1 42 68 53 00", "+852 2123 4567", "+65 6123 4567", "+4915123456789"]:
    case("intl_phone", f"overseas office {v} (24h)", ("intl_phone", v))

for _ in range(15):
    m, i, c = mobile(), id18(), card("62", 19)
    case("mixed", f"客户李四，身份证{i}，手机{m}，银行卡{c}，请核实。",
         ("id_card", i), ("mobile", m), ("bank_card", c))
for _ in range(5):
    m = mobile()
    case("mixed", f"{m}, {m} again; mail {m[:5]}@example.com",
         ("mobile", m), ("mobile", m), ("email", f"{m[:5]}@example.com"))

# --- hard negatives -------------------------------------------------------------

for _ in range(10):
    case("negative_order", f"订单号 {digits(4)}{rng.randint(10, 12)}{rng.randint(10, 28)}{digits(9)} 已发货")
for v in ["Order #A2023112400123", "PO-2023-000451", "SO2311240001", "运单号 SF1234567890123",
          "发票号码 04403210 00123456", "工单 #7731 已关闭", "合同编号 HT-2023-11-0042",
          "tracking 1Z999AA10123456784", "批次 20231124-0007-A", "SKU 6901234567892"]:
    case("negative_order", v)
for v in ["1700000000123", "1700000000", "2023-11-24 10:30:00", "20231124103000",
          "2023/11/24 08:00", "10:30:45", "T+1 到账", "2023-11-24T10:30:00Z",
          "2023年11月24日 10时30分", "ts=1732435200000", "took 1234567 ms",
          "at 12:30:45.123", "duration 00:15:30", "created_at: 1699999999999",
          "Unix 1600000000"]:
    case("negative_time", f"时间 {v}")
for v in ["12345678901", "10086100861", "11111111111", "20231124103", "12011112222",
          "10000000000", "11912345678", "99912345678", "01234567890", "12912345678"]:
    case("negative_digits", f"编号 {v} 不是手机号")
for _ in range(5):
    case("negative_digits", f"{mobile()}{digits(2)} 是十三位数字")
for _ in range(25):
    case("negative_id", f"身份证号 {id18(valid=False)} 校验失败")
for _ in range(5):
    body = f"{rng.choice(REGIONS)}19{rng.randint(50, 99)}0230{digits(3)}"
    case("negative_id", f"身份证 {body + id_check(body)} 日期不存在")
for prefix, length in [("62", 16), ("62", 19), ("4", 16), ("51", 16), ("37", 15)]:
    for _ in range(5):
        case("negative_card", f"卡号 {card(prefix, length, valid=False)} 无效")
for _ in range(5):
    case("negative_card", f"流水号 {card('8', 16)}")
for v in ["v1.2.3", "version 1.2.3.4", "1.0.0-beta.1", "Python 3.11.7", "10.0.19041.1",
          "Chrome 120.0.6099.109", "rustc 1.95.0", "版本 2.3.4.5", "build 4.4.1.208",
          "Release 2023.11.24.1", "node v20.20.2", "OpenSSL 3.0.11", "1.2.3.4.5",
          "Unicode 15.1.0", "kernel 6.1.0-13-amd64"]:
    case("negative_version", f"当前 {v} 已安装")
for v in ["¥1,234,567.89", "ISBN 978-7-111-12345-6", "邮编 100000", "std::vec::Vec", "a::b",
          "400-800-8888", "95588", "12:30", "MAC 00:1A:2B:3C:4D:5E", "3.14159265358979",
          "第1234567890页", "用户ID 8848", "QQ群 123456", "skills-and-tools-for-everyone",
          "sk-learn is a typo of sklearn", "GB 11643-1999", "RFC 5322", "<PHONE_1>x"]:
    if v == "<PHONE_1>x":
        continue  # a literal placeholder is swapped out on purpose: not a negative
    case("negative_other", f"说明：{v}")

# --- written against letters, in full width, split by invisible characters -------
# (Appended after the cases above so that those stay as they were generated.)


def wide(s):
    """Full-width digits, plus and hyphen (U+FF10-FF19, U+FF0B, U+FF0D)."""
    return "".join(chr(ord(c) + 0xFEE0) if c in string.digits + "+-" else c for c in s)


# The penetration test's own forms.
for v, kind in [("13912348765", "mobile"), ("110105199003071239", "id_card"),
                ("6222021234567890128", "bank_card")]:
    word = {"mobile": "tel", "id_card": "id", "bank_card": "card"}[kind]
    case("glued", f"{word}{v}", (kind, v))
    case("glued", f"my {word}{v} please", (kind, v))
    case("glued", f"请核对{word.upper()}{v}。", (kind, v))
for _ in range(6):
    m = mobile()
    tpl = rng.choice(["tel{}", "TEL{}", "phone{} call me", "手机tel{}end", "{}end",
                      "mobile:tel{}", "联系人Zhang{}"])
    case("glued", tpl.format(m), ("mobile", m))
m, m2 = mobile(), mobile()
case("glued", f"call{m}or{m2}", ("mobile", m), ("mobile", m2))
m = mobile()
case("glued", f"tel+86{m}", ("mobile", "+86" + m))
case("glued", f"mobile86{m}", ("mobile", "86" + m))
for _ in range(4):
    v = id18()
    case("glued", rng.choice(["id{}", "ID{}", "idcard{}", "sfz{}号"]).format(v), ("id_card", v))
v = id15()
case("glued", f"oldid{v}", ("id_card", v))
for _ in range(4):
    v = card("62", 19)
    case("glued", rng.choice(["card{}", "cardno{}", "bankcard{}!", "卡号card{}"]).format(v),
         ("bank_card", v))
v = grouped(card("62", 16), " ")
case("glued", f"card{v} thanks", ("bank_card", v))
case("glued", "fax010-62345678", ("landline", "010-62345678"))

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
for _ in range(4):
    m = mobile()
    case("folded", f"手机：{wide(m)}", ("mobile", wide(m)))
m = mobile()
v = wide(f"{m[:3]}-{m[3:7]}-{m[7:]}")
case("folded", f"手机 {v} 已验证", ("mobile", v))
m = mobile()
v = wide(f"{m[:3]} {m[3:7]} {m[7:]}").replace(" ", "\u3000")
case("folded", f"电话{v}", ("mobile", v))
m = mobile()
case("folded", f"请拨打{wide('+86' + m)}咨询", ("mobile", wide("+86" + m)))
case("folded", "手机１３９１２３４８７６５", ("mobile", "１３９１２３４８７６５"))
v = wide("11010519491231002") + "\uff38"
case("folded", f"身份证{v}", ("id_card", v))
v = wide(id18())
case("folded", f"证件号码：{v}", ("id_card", v))
v = wide(card("62", 19))
case("folded", f"银行卡号：{v}", ("bank_card", v))
for zw in ZERO_WIDTH:
    m = mobile()
    v = f"{m[:3]}{zw}{m[3:7]}{zw}{m[7:]}"
    case("folded", f"手机 {v} 已验证", ("mobile", v))
case("folded", "139\u200b1234\u200b8765", ("mobile", "139\u200b1234\u200b8765"))
c = card("62", 19)
v = "\u00ad".join([c[:4], c[4:8], c[8:12], c[12:16], c[16:]])
case("folded", f"卡号{v}", ("bank_card", v))
i = id18()
v = i[:6] + "\ufeff" + i[6:14] + "\u2060" + i[14:]
case("folded", f"身份证 {v}", ("id_card", v))
m = mobile()
case("folded", f"\u200b{m}\u200b", ("mobile", m))
m = mobile()
v = wide(m[:3]) + "\u200b" + wide(m[3:7]) + "\u200d" + wide(m[7:])
case("mixed", f"tel{v}", ("mobile", v))
c = card("62", 19)
v = wide(c[:10]) + "\u00ad" + c[10:]
case("mixed", f"card{v}，手机tel{wide('13912348765')}",
     ("bank_card", v), ("mobile", wide("13912348765")))


def hexstr(n):
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


for v in ["ORD20231124000123", "SO1234567890123456", "v1.2.3", "build 10.0.19041.1",
          "v13.9.1", "ver1.2.3.4", "r10.0.0.1", "SF1234567890123", "YT2012345678901234",
          "JT0001234567890", "EA123456789CN", "ts1700000000123", "T20231124103000Z",
          "t1732435200000ms", "x+12345678", "a3f5b9c13912348765d0e1f2a3b4c5d6e7f8a9b0",
          "deadbeef13912348765", "ab6222021234567890128", "13912348765cafe",
          "fe13912348765", "3f2504e0-4f89-11d3-9a0c-a13912348765",
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
          "v2tel13912348765", "dGVsMTM5MTIzNDg3NjU="]:
    case("negative_glued", f"说明：{v}")
for _ in range(10):
    # A hash with a valid mobile, ID number or card inside, glued to hex on both sides.
    inner = rng.choice([mobile(), id18(), card("62", 19)])
    head = hexstr(rng.randint(3, 10)) + rng.choice("abcdef")
    head = rng.choice(string.digits) + head  # digits in front: a mixed run
    v = (head + inner + rng.choice("abcdef") + hexstr(40))[:max(40, len(head) + len(inner) + 2)]
    case("negative_glued", f"commit {v}")
for _ in range(5):
    case("negative_glued", f"sha {rng.choice(['ab', 'cafe', 'fe', 'bad'])}{mobile()}")

with open(__file__.rsplit("/", 1)[0] + "/corpus.jsonl", "w", encoding="utf-8") as f:
    for c in cases:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
print(len(cases), "cases")
