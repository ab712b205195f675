"""Write the held-out routing set: demo-task prompts phrased unlike the training data, plus off-topic prompts.

Each line of ``data/routing/test.jsonl`` is ``{"prompt": ..., "label": "arithmetic" | "extraction" |
"dates" | "base"}``. The task prompts use templates and names that the training sets never use; the
off-topic prompts (label ``base``) share nothing with Adaptrix's built-in off-topic list.

    python scripts/make_routing_set.py [--out data/routing/test.jsonl] [--per-task 40]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ravi", "Elsa", "Bruno", "Yuki", "Nadia", "Marco", "Ada", "Kofi", "Greta", "Tariq", "Lucia", "Anton"]
SURNAMES = ["Okoye", "Lindqvist", "Ferreira", "Sato", "Petrov", "Bianchi", "Lovelace", "Adjei", "Holm", "Rahman"]
TOWNS = ["Vienna", "Nairobi", "Seville", "Kyoto", "Tallinn", "Bogota", "Adelaide", "Oslo", "Marseille", "Tbilisi"]
WORK = ["carpenter", "pharmacist", "translator", "electrician", "veterinarian", "accountant", "florist", "surgeon"]
THINGS = ["muffins", "birds", "pages", "tickets", "bottles", "chairs", "eggs", "tomatoes", "nails", "postcards"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

OFF_TOPIC = [
    "What's a good way to start learning to draw?",
    "Who invented the telephone?",
    "Write a short motivational message for a friend starting a new job.",
    "Why does ice float on water?",
    "What are some fun things to do in Rome?",
    "Explain what an operating system does.",
    "Can you recommend a podcast about history?",
    "What is the difference between a crocodile and an alligator?",
    "Describe how to tie a bowline knot.",
    "What causes earthquakes?",
    "Write a four-line poem about coffee.",
    "How do noise-cancelling headphones work?",
    "What is the main idea of stoic philosophy?",
    "Suggest a vegetarian dinner for two.",
    "Why do we dream?",
    "What is a sonnet?",
    "How should I prepare for a job interview?",
    "Tell me about the life of Marie Curie.",
    "What is the role of mitochondria in a cell?",
    "Give me a packing list for a camping trip.",
    "What is the difference between HTTP and HTTPS?",
    "How do I keep my houseplants alive in winter?",
    "What does a conductor do in an orchestra?",
    "Explain blockchain to a ten-year-old.",
    "Which is healthier, running or swimming?",
    "What is the story of the Trojan horse?",
    "How do tides work?",
    "Write a friendly reminder about tomorrow's team meeting.",
    "What are good habits for studying?",
    "Why are flamingos pink?",
    "What is the capital city of Kenya?",
    "How does a compass work?",
    "Give me an idea for a science fair project.",
    "What is impressionism in art?",
    "How can I reduce my screen time?",
    "What is the difference between a lake and a pond?",
    "Explain what a neural network is in one paragraph.",
    "What is the etiquette for tipping in Japan?",
    "Tell me a bedtime story about a brave mouse.",
    "What are the health benefits of walking?",
]


def arithmetic(rng: random.Random) -> str:
    a, b, thing, name = rng.randint(3, 40), rng.randint(2, 20), rng.choice(THINGS), rng.choice(NAMES)
    return rng.choice([
        f"A baker made {a + b} {thing} and sold {b}. How many {thing} remain?",
        f"What do you get if you put {a} {thing} together with another {b} {thing}? Give the count.",
        f"If each of {rng.randint(2, 9)} crates holds {rng.randint(2, 9)} {thing}, how many {thing} are there altogether?",
        f"{name} read {a} pages yesterday and {b} pages today. What's the total number of pages?",
        f"There were {a + b} {thing} on the table; {name} took {b}. How many are still on the table?",
        f"Quick maths: {name} owns {a} {thing} and receives {b} as a gift. Count them now.",
    ])


def extraction(rng: random.Random) -> str:
    person = f"{rng.choice(NAMES)} {rng.choice(SURNAMES)}"
    age, town, work = rng.randint(20, 75), rng.choice(TOWNS), rng.choice(WORK)
    bio = rng.choice([
        f"Our new colleague, {person}, is a {age} year old {work} who moved here from {town}.",
        f"{person} ({age}) runs a small business as a {work} in {town}.",
        f"Born {age} years ago, {person} now lives in {town} and is a {work}.",
    ])
    return rng.choice([
        f"Give me a JSON object with the name, age, city and job of this person: {bio}",
        f"Parse this bio into JSON with keys name, age, city, job. {bio}",
        f"Pull out the person's details as structured JSON from the following text: {bio}",
        f"Turn this sentence into a JSON record (name, age, city, job): {bio}",
    ])


def dates(rng: random.Random) -> str:
    day, month, year = rng.randint(1, 28), rng.choice(MONTHS), rng.randint(1900, 2099)
    written = rng.choice([f"{month} {day}, {year}", f"{day} {month} {year}", f"{month} the {day}, {year}"])
    return rng.choice([
        f"Write {written} in YYYY-MM-DD form.",
        f"What is the ISO 8601 representation of {written}?",
        f"Reformat the date '{written}' as year-month-day with dashes.",
        f"Normalize this date to ISO: {written}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/routing/test.jsonl")
    parser.add_argument("--per-task", type=int, default=40)
    args = parser.parse_args()
    rng = random.Random(4242)
    rows = []
    for label, generator in (("arithmetic", arithmetic), ("extraction", extraction), ("dates", dates)):
        seen: set[str] = set()
        while len(seen) < args.per_task:
            prompt = generator(rng)
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": prompt, "label": label})
    rows += [{"prompt": prompt, "label": "base"} for prompt in OFF_TOPIC]
    rng.shuffle(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} labelled prompts to {out}")


if __name__ == "__main__":
    main()
