"""Write the RAG evaluation corpus: the handbook of a fictional company, and questions about it.

Quorvale Instruments does not exist, so no language model can know these facts without retrieval.
The handbook is seven documents in every supported format (``data/rag/corpus/``): Markdown, plain
text, HTML (with a script and a style block that readers must drop) and a three-page PDF written
by hand here (Helvetica text objects, no PDF library needed). Several facts have near-miss
neighbours (1,200 vs 1,500 euros, 46 vs 62 euros, Harbour Days vs harbour buddy) so that retrieval
and answers are tested on the right passage, not the right topic.

``data/rag/questions.jsonl`` holds one question per line: ``question``, ``answers`` (accepted
spellings of the expected fact; an answer is right when it contains one, case-insensitively),
``source`` (file name of the document holding it) and ``page`` (PDF only).

    python scripts/make_rag_corpus.py [--out data/rag]

The output is deterministic: running it again rewrites identical files.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OVERVIEW_MD = """\
# Quorvale Instruments: company overview

Welcome to Quorvale Instruments. This handbook explains how the company works, what it expects from
you and what you can expect from it. Read it during your first week and come back to it whenever a
question comes up; the policy owners named in each chapter are happy to explain anything unclear.

## Our story

Quorvale Instruments was founded in 2009 in the harbour town of Kessridge by the marine engineer
Ilse Marrow and the software developer Tobias Quen. They started in a converted net loft on the
quay, building depth sensors for the local fishing cooperative. Their first product sold eleven
units in its first year. Today the company designs and builds ocean monitoring equipment for port
authorities, offshore wind farms and research institutes in more than thirty countries.

The headquarters are still in Kessridge, at 14 Lantern Quay, next to the old lighthouse. We also
have an assembly plant in Dunmere, a software office in Valtorre and a small service depot in
Port Ellis. Together the four sites employ 640 people.

## What we make

Our flagship product is the Tidewatch 7, a solar-powered depth sonar buoy that measures water
depth, wave height and current speed and reports them every ten minutes over satellite. The
Tidewatch family is complemented by the Silt Sentinel sediment probe and by Harbourview, the web
dashboard customers use to see all their instruments on one map.

## Leadership and values

Dr. Amara Okonkwo-Lind has been the chief executive officer since 2021; before that she led the
Dunmere plant for six years. The founders remain on the board: Ilse Marrow chairs it and Tobias
Quen is the chief technology officer.

We hold three company values: Steady, Curious and Candid. Steady means we build instruments that
keep working in a storm and we keep our promises to customers. Curious means we ask why a
measurement looks wrong before we explain it away. Candid means we say what we think, kindly and
early, including to managers.
"""

LEAVE_TXT = """\
LEAVE AND TIME OFF POLICY
Policy owner: People Team. Applies to all employees of Quorvale Instruments.

1. Annual leave

Full-time employees receive 27 days of paid annual leave per calendar year, in addition to public
holidays. After five years of continuous service the allowance rises to 31 days. Part-time
employees receive a share of the full-time allowance in proportion to their contracted hours.
Contractors are not covered by this policy; their time off is agreed in their contract.

Leave is requested in the HR portal at least two weeks in advance for periods longer than three
days. Team leads approve requests within five working days.

Up to 6 unused days may be carried over into the next calendar year. Carried-over days must be
taken by 31 March; days not taken by then are lost.

2. Sick leave

If you are ill, notify your team lead before 9:30 on the first day of absence, by phone or by
message. You do not need a doctor's note for short illnesses. A medical certificate is required
from the fourth consecutive day of sick leave (4 days or more). Sick days do not reduce your
annual leave.

3. Parental leave

Parents receive 19 weeks of fully paid parental leave, which can be taken at any time during the
first two years after a birth or adoption, in blocks of at least one week. Both parents are
entitled to it, whether or not they both work at Quorvale.

4. Volunteering

Every employee may take 2 paid volunteering days per year, which we call Harbour Days. They can be
used for any registered charity or community project, such as beach clean-ups, school science
fairs or the lifeboat station. Book them in the HR portal like annual leave.

5. Other leave

Compassionate leave, jury service and study leave for exams are granted as needed; discuss them
with the People Team.
"""

SECURITY_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>IT and security rules</title>
<style>body { font-family: sans-serif; } .note { color: #555; }</style>
<script>window.analytics = { track: function () { return "tracking code, not handbook text"; } };</script>
</head>
<body>
<h1>IT and security rules</h1>
<p class="note">Policy owner: the IT team. These rules apply to every laptop, phone and account Quorvale
Instruments provides.</p>

<h2>Passwords and accounts</h2>
<p>Every password must be at least 14 characters long. Use a passphrase of several unrelated words and
store it in the company password manager; never reuse a Quorvale password elsewhere. Multi-factor
authentication is required for email, the HR portal and source code repositories.</p>

<h2>Remote access</h2>
<p>When you work outside the office, connect through the company VPN, called <b>Lanternway</b>, before
opening any internal system. Lanternway starts automatically on company laptops; if it fails, do not
work around it with personal tools.</p>

<h2>Devices</h2>
<ul>
<li>Laptop disks are encrypted. The screen locks automatically after 7 minutes of inactivity; lock it
yourself (Windows key + L) whenever you leave your desk.</li>
<li>USB storage devices are blocked, except drives issued by IT, which carry an orange label.</li>
<li>Lost or stolen devices must be reported within one hour, day or night.</li>
</ul>

<h2>Phishing and incidents</h2>
<p>If an email looks suspicious, do not click its links. Forward it as an attachment to
shield@quorvale.example, the security team's mailbox, and delete it. Reporting a mistake quickly is
always better than hiding it: nobody is blamed for reporting.</p>

<h2>Help desk</h2>
<p>The IT help desk answers on phone extension 4242 from 8:00 to 18:00 on working days, and through the
help desk chat at any time.</p>
<script>console.log("this script must not be indexed");</script>
</body>
</html>
"""

EXPENSES_PDF_PAGES = [
    """TRAVEL AND EXPENSES POLICY - page 1 of 3: booking and approval

Policy owner: Finance. This policy applies to every business trip and every expense paid with
company money or claimed back from Quorvale Instruments.

All business trips are booked through Farway, the company travel portal. Farway holds our negotiated
rates with airlines, rail operators and hotels, and keeps a record of where travellers are in case
of an emergency. Bookings made outside Farway are reimbursed only when Farway could not offer the
trip.

Your team lead approves each trip before it is booked. Any single expense above 1,500 euros also
needs the approval of a director, before the money is spent. Conference fees and customer
entertainment always need approval in advance, whatever the amount.

Expense claims are submitted in the finance app within 21 days of the end of the trip, with a photo
of every receipt. Claims submitted later are paid only with a director's written exception.""",
    """TRAVEL AND EXPENSES POLICY - page 2 of 3: getting there

Flights: book economy class for flights shorter than 6 hours. For flights of 6 hours or longer,
premium economy may be booked. Business class is never reimbursed, even on long-haul routes.

Trains: travel second class. First class is allowed for train journeys longer than 3 hours, so that
you can work on the way.

Cars: use a rental car only when public transport is not practical. When you drive your own car for
business, the mileage rate is 0.38 euros per kilometre, which covers fuel, insurance and wear.
Parking and tolls are reimbursed separately, with receipts.

Taxis are fine late at night, with heavy equipment, or when public transport would take more than
twice as long.""",
    """TRAVEL AND EXPENSES POLICY - page 3 of 3: staying there

Meals: the daily meal allowance is 46 euros on domestic trips and 62 euros on trips abroad. The
allowance covers breakfast, lunch, dinner and drinks; alcohol is never reimbursed. When a customer or
a conference provides a meal, the allowance is reduced accordingly.

Hotels: the cap is 140 euros per night in most cities and 210 euros per night in capital cities,
breakfast included. Staying with friends or family instead earns a flat 30 euros per night.

Payment: use the company card for travel and hotels where you have one. Personal money spent on
approved expenses is paid back with the next monthly salary.""",
]

OFFICE_MD = """\
# Office and facilities at Lantern Quay

The Kessridge headquarters occupy four floors of the old customs house at 14 Lantern Quay. This
chapter covers the practical side of working there. Facilities questions go to the front desk on the
ground floor.

## Opening hours

The building opens at 6:30 and closes at 21:00 on working days. Outside those hours your badge does
not open the doors; ask the front desk in advance if you need to work late. The building is closed
at weekends except for the service team on call.

## Food

The cafeteria, called The Galley, is on the first floor and serves lunch from 11:30 to 14:00. Lunch
is subsidised; breakfast and snacks are free. Each floor also has a kitchen with coffee machines and
a fridge that is emptied every Friday evening.

## Lantern Hour

Every Friday at 16:00 we gather on the roof terrace (or in The Galley when it rains) for Lantern
Hour. Teams demo what they built during the week, new colleagues are introduced, and there are
snacks. It is optional, but most people come.

## Parking and getting here

There are 40 parking spaces behind the building. Spaces are booked a day ahead in the Berth app;
electric cars have six charging points. Most colleagues come by bike or by the harbour ferry, and
there is a covered bike shed with showers next to it.

## Dogs

Well-behaved dogs are welcome on the third floor only, which has hard floors and a water station.
Register your dog with the front desk first. Dogs are not allowed in The Galley.
"""

ONBOARDING_TXT = """\
ONBOARDING AND TRAINING
Policy owner: People Team.

Your first weeks

On your first day you receive your laptop, badge and accounts from the front desk at 9:00. Your
team lead walks you through the building and your first tasks.

Every new hire is paired with a harbour buddy for their first 90 days. Your harbour buddy is a
colleague from another team who answers everyday questions, introduces you to people and checks in
with you every week. Buddies volunteer for the role and receive a short guide from the People Team.

Within the first two weeks every employee completes Deckhand 101, the mandatory safety course. It
covers fire safety, lifting heavy equipment, working near water and the rules for visiting
customer sites at sea. Nobody may visit a port or a vessel on company business before passing it.

Probation

The probation period lasts 5 months. Halfway through, you and your team lead hold a mid-probation
review; at the end, a final review confirms your position. During probation the notice period is
two weeks on both sides.

Learning and development

Each employee has a personal training budget of 1,200 euros per year for courses, books and
conferences. Unused budget does not carry over. Training that costs more than the budget can be
approved by your director when it clearly serves your role.

Internal courses on our products (Tidewatch, Silt Sentinel and Harbourview) are free and run every
quarter.
"""

BENEFITS_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Benefits</title>
<style>table { border-collapse: collapse; }</style></head>
<body>
<h1>Benefits at Quorvale Instruments</h1>
<p>Policy owner: People Team. The benefits below apply to employees with a contract of at least six
months.</p>
<h2>Pension</h2>
<p>Quorvale matches your pension contributions up to 7% of your gross salary. If you contribute 5%,
Quorvale adds 5%; if you contribute 10%, Quorvale adds 7%. Matching starts in your first month.</p>
<h2>Health</h2>
<p>Private health insurance is provided by Meridian Mutual for you and your children, free of charge.
Partners can be added at the company's group rate.</p>
<h2>Getting around</h2>
<p>Through the Pedalshare bike lease scheme you can lease a bike or an e-bike and pay for it from your
gross salary over three years. Public transport season tickets are reimbursed in full.</p>
<h2>Staying well</h2>
<p>Quorvale pays a gym subsidy of 35 euros per month towards any gym, pool or sports club membership.
An employee assistance line offers free, confidential counselling.</p>
</body>
</html>
"""

QUESTIONS = [
    ("Who founded Quorvale Instruments together with Tobias Quen?", ["Ilse Marrow", "Marrow"], "01_company_overview.md"),
    ("In which town are the headquarters of Quorvale Instruments?", ["Kessridge"], "01_company_overview.md"),
    ("What is the name of Quorvale's flagship depth sonar buoy?", ["Tidewatch"], "01_company_overview.md"),
    ("How many people does Quorvale Instruments employ?", ["640"], "01_company_overview.md"),
    ("Who has been the chief executive officer of Quorvale since 2021?", ["Okonkwo-Lind", "Okonkwo Lind"], "01_company_overview.md"),
    ("How many days of paid annual leave do full-time Quorvale employees get?", ["27"], "02_leave_and_time_off.txt"),
    ("How many weeks of paid parental leave do Quorvale parents receive?", ["19"], "02_leave_and_time_off.txt"),
    ("By what time must a sick employee notify their team lead on the first day?", ["9:30"], "02_leave_and_time_off.txt"),
    ("By which date must carried-over leave days be taken?", ["31 March", "March 31"], "02_leave_and_time_off.txt"),
    ("What are Quorvale's paid volunteering days called?", ["Harbour Days", "Harbour Day"], "02_leave_and_time_off.txt"),
    ("How many unused leave days can be carried over into the next year?", ["6", "six"], "02_leave_and_time_off.txt"),
    ("What is the minimum length of a Quorvale password?", ["14"], "03_it_and_security.html"),
    ("What is the name of the Quorvale company VPN?", ["Lanternway"], "03_it_and_security.html"),
    ("To which address should suspicious emails be forwarded?", ["shield@quorvale.example"], "03_it_and_security.html"),
    ("After how many minutes of inactivity does a Quorvale laptop screen lock?", ["7", "seven"], "03_it_and_security.html"),
    ("What colour is the label on USB drives issued by IT?", ["orange"], "03_it_and_security.html"),
    ("What is the phone extension of the IT help desk?", ["4242"], "03_it_and_security.html"),
    ("Which travel portal are Quorvale business trips booked through?", ["Farway"], "04_travel_and_expenses.pdf", 1),
    ("Above what amount does a single expense need a director's approval?", ["1,500", "1500", "1 500"], "04_travel_and_expenses.pdf", 1),
    ("Within how many days of a trip must expense claims be submitted?", ["21"], "04_travel_and_expenses.pdf", 1),
    ("What is the mileage rate for driving your own car on business?", ["0.38"], "04_travel_and_expenses.pdf", 2),
    ("From what flight duration may premium economy be booked?", ["6 hours", "six hours", "6"], "04_travel_and_expenses.pdf", 2),
    ("What is the daily meal allowance on domestic trips?", ["46"], "04_travel_and_expenses.pdf", 3),
    ("What is the hotel cap per night in capital cities?", ["210"], "04_travel_and_expenses.pdf", 3),
    ("What is the name of the cafeteria at the Kessridge headquarters?", ["Galley"], "05_office_and_facilities.md"),
    ("What is the Friday afternoon gathering on the roof terrace called?", ["Lantern Hour"], "05_office_and_facilities.md"),
    ("Which app is used to book a parking space at headquarters?", ["Berth"], "05_office_and_facilities.md"),
    ("On which floor of the headquarters are dogs allowed?", ["third", "3rd"], "05_office_and_facilities.md"),
    ("At what time does the headquarters building open?", ["6:30"], "05_office_and_facilities.md"),
    ("What is the mandatory safety course for new employees called?", ["Deckhand 101", "Deckhand"], "06_onboarding_and_training.txt"),
    ("How long does the probation period at Quorvale last?", ["5 months", "five months"], "06_onboarding_and_training.txt"),
    ("How large is each employee's yearly training budget?", ["1,200", "1200", "1 200"], "06_onboarding_and_training.txt"),
    ("Up to what share of salary does Quorvale match pension contributions?", ["7%", "7 %", "7 percent", "seven percent"], "07_benefits.html"),
    ("Which company provides Quorvale's private health insurance?", ["Meridian Mutual", "Meridian"], "07_benefits.html"),
    ("What is the name of Quorvale's bike lease scheme?", ["Pedalshare"], "07_benefits.html"),
]


def write_pdf(path: Path, pages: list[str], font_size: int = 10, leading: int = 14, width: int = 92) -> None:
    """A minimal valid PDF: one Helvetica text object per US Letter page, lines wrapped at ``width``."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * n for n in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for page_id, text in zip(page_ids, pages):
        lines: list[str] = []
        for paragraph in text.split("\n\n"):
            lines += textwrap.wrap(" ".join(paragraph.split()), width) + [""]
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        body = f"BT /F1 {font_size} Tf {leading} TL 56 740 Td\n" + "\n".join(f"({line}) Tj T*" for line in escaped) + "\nET"
        stream = body.encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {page_id + 1} 0 R >>".encode())
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "rag", help="folder for corpus/ and questions.jsonl")
    args = parser.parse_args()
    corpus = args.out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    texts = {"01_company_overview.md": OVERVIEW_MD, "02_leave_and_time_off.txt": LEAVE_TXT,
             "03_it_and_security.html": SECURITY_HTML, "05_office_and_facilities.md": OFFICE_MD,
             "06_onboarding_and_training.txt": ONBOARDING_TXT, "07_benefits.html": BENEFITS_HTML}
    for name, text in texts.items():
        (corpus / name).write_text(text, encoding="utf-8")
    write_pdf(corpus / "04_travel_and_expenses.pdf", EXPENSES_PDF_PAGES)
    with open(args.out / "questions.jsonl", "w", encoding="utf-8") as handle:
        for question, answers, source, *page in QUESTIONS:
            record = {"question": question, "answers": answers, "source": source, "page": page[0] if page else None}
            handle.write(json.dumps(record) + "\n")
    print(f"wrote {len(texts) + 1} documents to {corpus} and {len(QUESTIONS)} questions to {args.out / 'questions.jsonl'}")


if __name__ == "__main__":
    main()
