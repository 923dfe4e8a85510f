"""The texts and (query, passage) pairs of ember's fixtures, and an extra corpus for training the tiny
tokenizers. Used by make_fixtures.py; everything here is deterministic.

Escapes (\\u...) mark characters that are invisible or easy to lose in an editor: combining accents
(NFD), zero-width joiners, variation selectors, soft hyphens.
"""

import random

# Sentences the long texts are drawn from (seeded), and the edge texts are built from.
ENGLISH = [
    "The committee met on Tuesday to review the budget for the coming year.",
    "Most of the members agreed that the library needed a new roof before winter.",
    "A small group of volunteers painted the fence along the river path.",
    "Researchers measured the temperature of the lake every morning for three months.",
    "The results suggest that warmer water reduces the number of fish near the shore.",
    "She opened the window, and the smell of fresh bread drifted in from the bakery.",
    "Trains to the airport leave every fifteen minutes from the central station.",
    "Our software update fixes a bug that caused the app to crash on startup.",
    "Children in the village learn to swim before they learn to ride a bicycle.",
    "The old lighthouse has guided ships safely into the harbor for two centuries.",
    "He wrote the first draft of the novel in a notebook he carried everywhere.",
    "Heavy rain is expected in the northern valleys late on Friday evening.",
    "The museum's new exhibition explores the history of printing and paper.",
    "Farmers planted wheat in the spring and harvested it at the end of summer.",
    "A good cup of coffee depends on fresh beans, clean water and patience.",
    "The engineers tested the bridge with trucks loaded with sand and gravel.",
    "Many birds migrate thousands of kilometres to find food during the winter.",
    "The orchestra rehearsed the symphony twice before the evening concert.",
    "Doctors recommend at least seven hours of sleep for most adults.",
    "The mountain road was closed after a landslide blocked both lanes.",
    "Students presented their projects on renewable energy to the whole school.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Astronomers observed a faint galaxy more than ten billion light years away.",
    "The startup raised enough money to hire twelve new engineers this year.",
    "Please remember to return your books to the library before the holidays.",
    "A quiet garden behind the house was full of roses and lavender.",
    "The translation of the ancient manuscript took the scholars nearly a decade.",
    "Electric buses now carry most passengers in the city centre.",
    "The referee stopped the match when the fog made the ball impossible to see.",
    "After the storm, neighbours helped each other clear fallen branches from the streets.",
]

FOREIGN = [
    "Le comité s'est réuni mardi pour examiner le budget de l'année prochaine.",
    "Die Forscher haben jeden Morgen die Temperatur des Sees gemessen.",
    "Los niños del pueblo aprenden a nadar antes de montar en bicicleta.",
    "Il vecchio faro guida le navi nel porto da due secoli.",
    "今年の夏はとても暑く、多くの人が海へ出かけました。",
    "研究人员每天早上测量湖水的温度，持续了三个月。",
    "Учёные наблюдали слабую галактику на расстоянии десяти миллиардов световых лет.",
    "도서관은 겨울이 오기 전에 새 지붕이 필요합니다.",
    "المكتبة تحتاج إلى سقف جديد قبل حلول الشتاء.",
    "Ο παλιός φάρος οδηγεί τα πλοία στο λιμάνι εδώ και δύο αιώνες.",
]


def _long_text(seed, n_words, pool):
    rng = random.Random(seed)
    out, words = [], 0
    while words < n_words:
        s = rng.choice(pool)
        out.append(s)
        words += len(s.split())
        if rng.random() < 0.12:
            out.append("\n\n")
    return " ".join(out).replace(" \n\n ", "\n\n")


def base_texts():
    """Returns (texts, short indices for instruction runs, short indices for hidden-state fixtures)."""
    paragraph = (
        "Photosynthesis is the process by which green plants, algae and some bacteria turn light "
        "energy into chemical energy. Using sunlight, water and carbon dioxide, they produce glucose "
        "and release oxygen as a by-product. The light-dependent reactions take place in the "
        "thylakoid membranes, while the Calvin cycle runs in the stroma of the chloroplast.")
    news = (
        "City officials announced on Monday that the long-delayed tram line will open next spring. "
        "The project, first proposed in 2009, was held up by funding disputes, a change of "
        "contractor and the discovery of Roman ruins beneath the main square. Archaeologists spent "
        "eighteen months documenting the site before construction could resume. The new line will "
        "connect the university campus with the train station and the hospital, and the city "
        "expects about 40,000 passengers a day. Tickets will cost the same as a bus fare, and "
        "children under twelve will travel free.")
    passage = (
        "Vitamin D helps the body absorb calcium and keeps bones strong. A deficiency can cause "
        "fatigue, bone pain, muscle weakness and, in children, rickets. People who spend little time "
        "outdoors, who have darker skin, or who live far from the equator are at higher risk. "
        "Doctors diagnose a deficiency with a blood test and usually treat it with supplements and "
        "dietary changes, such as eating more oily fish, eggs and fortified foods. Too much vitamin D "
        "can also be harmful, so supplements should be taken as advised.")
    texts = [
        "The quick brown fox jumps over the lazy dog.",                                  # 0
        "Hello world",                                                                   # 1
        "how do I reset my router password",                                             # 2 query
        "best pizza near me open late",                                                  # 3 query
        "What is the capital of France?",                                                # 4
        paragraph,                                                                       # 5
        "Rust's ownership model guarantees memory safety without a garbage collector.",  # 6
        "今天天气很好，我们去公园散步吧。",                                               # 7 zh
        "東京は日本の首都で、人口が最も多い都市です。カタカナとひらがなも使います。",        # 8 ja
        "안녕하세요, 만나서 반갑습니다. 오늘은 날씨가 좋네요.",                            # 9 ko
        "اللغة العربية جميلة جدا ويتحدث بها الملايين.",                                   # 10 ar
        "Москва — столица России, крупнейший город страны.",                             # 11 ru
        "Crème brûlée, jalapeño, Ñandú, über die Straße, København og Ærøskøbing.",      # 12 NFC
        # 13: NFD, combining acute / diaeresis / tilde / ring
        "Cafe\u0301 nai\u0308ve re\u0301sume\u0301, sen\u0303or Zoe\u0308, A\u030Angstro\u0308m",
        "I love pizza \U0001F355\U0001F355 and coffee \u2615 \U0001F600\U0001F44D\U0001F3FD",  # 14
        # 15: ZWJ family, flags (regional indicators), rainbow flag (VS16 + ZWJ)
        "Family: \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466, flags: "
        "\U0001F1EB\U0001F1F7 \U0001F1EF\U0001F1F5 \U0001F1FA\U0001F1F8, rainbow "
        "\U0001F3F3\uFE0F\u200D\U0001F308",
        "Tokyo 東京 Москва Moscow القاهرة Cairo 서울 Seoul Αθήνα Athens",                 # 16 mixed
        "Call +1 (555) 123-4567 or visit https://example.com/path/to?q=a&b=2#frag - "
        "price: $1,234.56 (≈ €1.100,00); pi ≈ 3.14159e0, 50% off!!! <b>bold</b> [x] {y} a_b ~/.rc",
        "first line\nsecond\tline with\ttabs\n\n   indented third line\r\nend",          # 18
        "",                                                                              # 19
        "   ",                                                                           # 20
        "a",                                                                             # 21
        "中",                                                                            # 22
        'fn main() { println!("{}", 1 + 2); } // sum <tag attr=\'x\'>',                   # 23
        "THE NASA API RETURNED HTTP 404 NOT FOUND!!! ÉCOLE ÜBER",                        # 24
        "a word too long for wordpiece: " + "x" * 120 + " then normal words",            # 25
        "नमस्ते दुनिया, आप कैसे हैं?",                                                     # 26 hi
        "zero\u200Bwidth space, soft\u00ADhyphen, no\u00A0break space, ctrl\u0007bell",  # 27
        "symptoms of vitamin D deficiency",                                              # 28 query
        news,                                                                            # 29
        passage,                                                                         # 30
        "Καλημέρα κόσμε! Ça va? Grüß Gott. ¿Qué tal? Dziękuję. Teşekkürler. Việt Nam.",  # 31
        _long_text(7, 760, ENGLISH),                                                     # 32 long
        _long_text(8, 820, ENGLISH + FOREIGN),                                           # 33 long
        "   leading and trailing spaces   ",                                             # 34
    ]
    short_idx = [0, 2, 3, 4, 7, 28]
    hidden_idx = [19, 21, 4, 7]
    return texts, short_idx, hidden_idx


def base_pairs(texts):
    long1, long2 = texts[32], texts[33]
    vit = texts[30]
    return [
        ("how do I reset my router password",
         "To reset your router, hold the reset button for ten seconds, then log in with the "
         "default password printed on the label."),
        ("how do I reset my router password",
         "The Great Barrier Reef is the world's largest coral reef system."),
        ("what is the capital of France?", "Paris is the capital and most populous city of France."),
        ("what is the capital of France?", "Berlin is the capital of Germany."),
        ("symptoms of vitamin D deficiency", vit),
        ("symptoms of vitamin D deficiency",
         "Change the engine oil every 10,000 km and check the tyre pressure monthly."),
        ("what is rust", ""),                                                 # empty passage
        ("", "Rust is a systems programming language focused on safety."),   # empty query
        ("", ""),
        ("photosynthesis in plants", long1),                                 # only_second
        (long2, "a short passage"),                                          # longest_first
        (long1, long2),                                                      # both long
        ("中国的首都是哪里？", "北京是中华人民共和国的首都。"),
        ("Wie spät ist es?", "Es ist drei Uhr nachmittags."),
        ("Какая погода в Москве?", "The weather in Moscow is cold and snowy today."),
        ("pizza \U0001F355 recipe",
         "Knead the dough, add tomato sauce and mozzarella, bake at 250°C for 8 minutes."),
        ("東京の人口は？", "東京都の人口は約1400万人です。"),
        ("benefits of electric buses", texts[29]),                           # medium passage
        ("   ", "whitespace-only query"),
        ("a", "a"),
    ]


# Extra varied text for the tiny tokenizers' training (with the texts and pairs above).
EXTRA_CORPUS = ENGLISH + FOREIGN + [
    "Machine learning models map sentences to vectors so that similar meanings lie close together.",
    "A search engine ranks documents by how relevant they are to the query.",
    "Cross-encoders read the query and the passage together and output a single score.",
    "Embeddings are normalized to unit length before computing cosine similarity.",
    "The weather today is sunny with a light breeze from the west.",
    "Please send the report by Friday; the meeting starts at 9:30 in room 204.",
    "Version 2.1.0 was released on 2024-03-15 with 37 bug fixes and 5 new features.",
    "Email support@example.org or call 0800 123 456 for help with your account.",
    "The cat sat on the mat, and the dog slept by the fire.",
    "Numbers: one two three four five six seven eight nine ten hundred thousand million.",
    "Questions: who what when where why how which whose whom?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。我们今天学习中文。",
    "素早い茶色の狐がのろまな犬を飛び越える。日本語を勉強しています。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘습니다. 한국어를 공부합니다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "Programming languages: Rust, Python, C++, Go, JavaScript, TypeScript, Haskell.",
    "https://www.example.com/index.html?lang=en&page=3 and http://localhost:8080/api/v1",
    "Prices rose by 3.5% in May; the index closed at 4,512.33 points.",
    "Hospitals, schools and libraries are public services in most countries.",
    "The river flows through the valley past farms, forests and small towns.",
]
