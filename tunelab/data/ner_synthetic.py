"""builtin:ner-synthetic: named-entity sentences generated at run time from templates and word lists written here.

How it is built (seeded, so every run gets the same 3,000 sentences):
1. A template is a sentence with slots, words separated by single spaces and punctuation written as its own
   word ("{PER} moved to {LOC} in {DATE} ."). There are 60 of them: news-like, chatty and list-like ones,
   a few long ones (30-40 words) and a few with no slot (sentences without entities).
2. Each slot is filled from the lists below: people (PER), places (LOC), organisations (ORG), products,
   events, awards and nationalities (MISC) and dates (DATE, composed from a weekday, a day, a month and a
   year). Names of several words, hyphenated names (Jean-Luc, Baden-Württemberg), accented names (José,
   Zoë, Müller, Søren) and names with an apostrophe (O'Neill) are in the lists; a slot value is cut into
   words at its spaces, so "Jean-Luc Moreau" is two words, "Jean-Luc" one.
3. The words of a filled slot get IOB2 tags (B-TYPE, then I-TYPE); every other word is O.
4. About one sentence in 30 is long: three to five filled templates joined by ", and" / ";" into one
   sentence (the later parts' first word lower-cased) of about 25 to 120 words, so that windows over long
   inputs are exercised. Sentences average about 15 words; 139 of the 3,000 have no entity.
Records are {"tokens": [...], "tags": [...]}. The words are made up here (no text is taken from elsewhere);
every name is a common first name and surname put together, not a reference to a real person.
"""
from __future__ import annotations

import random

SEED = 14
SIZE = 3000
LONG_EVERY = 30

PER = [
    "Anna Schmidt", "José García", "Zoë Adams", "Hans Müller", "Jean-Luc Moreau", "Mary O'Neill", "Li Wei",
    "Priya Natarajan", "Ahmed Al-Farsi", "Björn Larsson", "Chloé Dubois", "Siobhán Kelly", "Kwame Mensah",
    "Olga Ivanova", "Mateo Rossi", "Yuki Tanaka", "Fatima Zahra Benali", "Luis Fernando Ortega",
    "Anne-Marie Lefèvre", "Ngozi Okafor", "Søren Nielsen", "Tom", "Maria", "Helen Park", "Peter van der Berg",
    "Ines Costa", "Rafael Núñez", "Agnieszka Nowak", "Émile Laurent", "Kai Fischer", "Amara Diallo",
    "Hiroshi Sato", "Sarah Thompson", "David Cohen", "Lena Johansson", "Omar Haddad", "Elif Yılmaz",
    "Carlos Mendoza", "Grace Wanjiru", "Jürgen Weiß", "Noor Rahman", "Hannah Becker", "Pablo Ruiz-Torres",
]
LOC = [
    "Paris", "New York", "São Paulo", "Zürich", "Lake Geneva", "Rio de Janeiro", "Kuala Lumpur", "Cape Town",
    "Stratford-upon-Avon", "Baden-Württemberg", "Québec", "Mount Kenya", "Reykjavík", "Kraków", "Lagos",
    "Buenos Aires", "Oslo", "Nairobi", "Rhine Valley", "Hamburg", "Bordeaux", "Kyoto", "Istanbul",
    "Ho Chi Minh City", "Málaga", "Winnipeg", "Tasmania", "Lisbon", "Marrakesh", "Seville", "Gdańsk",
    "Atacama Desert", "Saint-Étienne", "Brittany", "Kerala", "Patagonia", "Amsterdam", "Düsseldorf",
]
ORG = [
    "Siemens", "United Nations", "Red Cross", "Acme Corporation", "Nordic Rail", "University of Oslo",
    "Deutsche Bahn", "Mercy Hospital", "Hewlett-Packard", "Banco do Brasil", "Médecins Sans Frontières",
    "World Health Organization", "Greenfield Bank", "Blue Harbor Shipping", "Société Générale",
    "Tata Motors", "Sunrise Bakery", "European Central Bank", "Orion Labs", "Nestlé", "Atlas Insurance",
    "FC Porto", "Riverside Council", "Kumar & Sons", "Lumen Software", "Pacific Airways", "Volta Energy",
    "Royal Ballet", "Helios Pharma", "Northwind Traders", "Café Central",
]
MISC = [
    "Olympic Games", "Tour de France", "Nobel Prize", "Windows XP", "Boeing 747", "German", "French",
    "Brazilian", "World Cup", "PlayStation 5", "Eurovision Song Contest", "Galaxy S9", "Model T", "Japanese",
    "Kenyan", "Golden Globe", "Champions League", "iPhone 12", "Norwegian", "Booker Prize", "Oktoberfest",
    "Mexican", "Tesla Model 3", "Carnival", "Fête de la Musique", "Polish", "Linux", "Ramadan",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

TEMPLATES = [
    "{PER} moved to {LOC} in {DATE} .",
    "{PER} joined {ORG} as a senior engineer .",
    "{ORG} opened a new office in {LOC} on {DATE} .",
    "On {DATE} , {PER} won the {MISC} .",
    "The {MISC} will be held in {LOC} next year .",
    "{PER} and {PER} met in {LOC} to discuss the merger with {ORG} .",
    "Shares of {ORG} fell sharply after {PER} resigned .",
    "I bought a {MISC} for my brother last week .",
    "According to {ORG} , prices in {LOC} rose by four percent .",
    "{PER} , a spokesperson for {ORG} , declined to comment .",
    "She was born in {LOC} on {DATE} .",
    "{ORG} signed a deal with {ORG} worth two million euros .",
    "The {MISC} team arrived in {LOC} late on {DATE} .",
    "Have you ever been to {LOC} ?",
    "{PER} said the {MISC} was the best thing that ever happened to her .",
    "Volunteers from {ORG} reached {LOC} after a long drive .",
    "My friend {PER} works at {ORG} in {LOC} .",
    "The meeting was moved to {DATE} .",
    "{PER} 's new book about {LOC} comes out on {DATE} .",
    "Tickets for the {MISC} sold out in ten minutes .",
    "It rained all day , so we stayed at home .",
    "The committee thanked everyone who helped .",
    "Nobody knew what the answer was .",
    "{PER} , {PER} and {PER} signed the letter .",
    "Flights between {LOC} and {LOC} were cancelled on {DATE} .",
    "{ORG} hired {PER} to lead its team in {LOC} .",
    "The {MISC} version was released by {ORG} on {DATE} .",
    "Police in {LOC} are looking for {PER} .",
    "We drove from {LOC} to {LOC} without stopping .",
    "{PER} thanked {ORG} for its support during the {MISC} .",
    "Last year the {MISC} drew record crowds to {LOC} .",
    "{PER} will speak at {ORG} on {DATE} about climate policy .",
    "A storm hit {LOC} , and {ORG} sent help .",
    "Why did {PER} leave {ORG} so suddenly ?",
    "The report by {ORG} was published on {DATE} .",
    "{PER} grew up near {LOC} and studied at {ORG} .",
    "Her grandmother was {MISC} and spoke four languages .",
    "{LOC} is famous for its food , its music and its old bridges .",
    "Thanks to {PER} , the project finished before {DATE} .",
    "{ORG} and {ORG} announced a joint venture in {LOC} .",
    "The mayor of {LOC} , {PER} , opened the festival .",
    "From {DATE} , trains run every hour between {LOC} and {LOC} .",
    "{PER} lost the final of the {MISC} to {PER} .",
    "A new factory near {LOC} will make parts for {ORG} .",
    "Is {PER} still the head of {ORG} ?",
    "They celebrated {MISC} with friends from {LOC} .",
    "The museum in {LOC} reopened on {DATE} after two years of work .",
    "{PER} called it a great day for {LOC} .",
    "Researchers at {ORG} say the {MISC} sold better than expected .",
    "On {DATE} {PER} flew to {LOC} .",
    "Please send the forms to {PER} at {ORG} before {DATE} .",
    "Everyone in {LOC} remembers the {MISC} of that summer .",
    "{ORG} , based in {LOC} , employs about three hundred people .",
    "After leaving {ORG} on {DATE} , {PER} spent a year travelling through {LOC} , {LOC} and {LOC} before "
    "settling in a small village where , as she told reporters , nobody had heard of the {MISC} .",
    "The board of {ORG} met in {LOC} on {DATE} and , after a long and at times heated debate that lasted well "
    "into the night , agreed that {PER} should take over from {PER} as chief executive .",
    "When {PER} first arrived in {LOC} on {DATE} , the city had no airport , no university and no hospital , "
    "and the nearest doctor worked for {ORG} three days away .",
    "Despite the snow , thousands of fans who had travelled from {LOC} and {LOC} filled the stadium to watch "
    "the {MISC} final , which {ORG} had almost cancelled only a week earlier .",
    "{PER} still remembers {DATE} , the day {ORG} called to say the {MISC} was hers .",
    "Ask {PER} about {LOC} .",
    "{DATE} was a quiet day in {LOC} .",
]
JOINS = [",", "and", ";"]


def date(rng: random.Random) -> str:
    """A date phrase: a weekday, a year, a month and year, a day and month, or a full date."""
    day, month, year = rng.randint(1, 28), rng.choice(MONTHS), rng.randint(1950, 2029)
    return rng.choice([rng.choice(WEEKDAYS), str(year), f"{month} {year}", f"{day} {month}", f"{month} {day}",
                       f"{day} {month} {year}", f"{rng.choice(WEEKDAYS)} {day} {month}"])


def fill(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """Words and IOB2 tags of one template with its slots filled."""
    pools = {"{PER}": PER, "{LOC}": LOC, "{ORG}": ORG, "{MISC}": MISC}
    tokens, tags = [], []
    for word in template.split(" "):
        if word in pools or word == "{DATE}":
            kind = word[1:-1]
            value = date(rng) if kind == "DATE" else rng.choice(pools[word])
            words = value.split(" ")
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags


def long_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Three to five filled templates joined into one sentence (each one's end mark dropped but the last's)."""
    tokens, tags = [], []
    parts = rng.randint(3, 5)
    for i in range(parts):
        words, labels = fill(rng.choice(TEMPLATES), rng)
        if i > 0 and labels[0] == "O" and words[0] != "I":  # "..., and the meeting ..." not "and The meeting"
            words[0] = words[0].lower()
        if i < parts - 1:
            words, labels = words[:-1] + [rng.choice(JOINS)], labels[:-1] + ["O"]
            if words[-1] == "and":
                words[-1:], labels[-1:] = [",", "and"], ["O", "O"]
        tokens += words
        tags += labels
    return tokens, tags


def ner_synthetic(log=None, size: int = SIZE, seed: int = SEED) -> list[dict]:
    """`size` sentences {"tokens", "tags"} (IOB2 tags, types PER LOC ORG MISC DATE), the same for one seed."""
    rng = random.Random(seed)
    records = []
    for i in range(size):
        tokens, tags = long_sentence(rng) if i % LONG_EVERY == LONG_EVERY - 1 else fill(rng.choice(TEMPLATES), rng)
        records.append({"tokens": tokens, "tags": tags})
    return records
