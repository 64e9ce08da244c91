"""Write bench/queries/labelled.jsonl, then check it against pypdf's text of the PDFs (check_labelled.py).

    .venv/bin/python bench/queries/make_labelled.py bench/queries/labelled.jsonl
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_labelled import check

FR = "federal-register-2020-17221.pdf"
Q = [
 # (question, file, pages, kind, evidence on (the first of) those pages)
 ("By what date does the agency need to receive feedback on the Boeing proposal?", FR, [1, 6], "paraphrase", "must receive comments on this proposed AD by September 21"),
 ("How should I label pages of my submission that contain trade secrets?", FR, [1, 15], "paraphrase", "Please mark each page of your submission containing CBI"),
 ("Whom can I phone or email at the aviation agency with questions about the 737 directive?", FR, [1, 15], "paraphrase", "Ian Won, Manager, Seattle ACO Branch"),
 ("How many people died in the crash near Jakarta?", FR, [2], "paraphrase", "Indonesia, resulting in 189 fatalities"),
 ("How many people were killed when the Ethiopian jet went down in March 2019?", FR, [2], "paraphrase", "resulting in 157 fatalities"),
 ("What do you call the angle at which a wing meets the incoming airflow?", FR, [2], "paraphrase", "is the angle at which the airplane wing meets the oncoming air"),
 ("How are pilots physically warned that the plane is about to lose lift?", FR, [2], "paraphrase", "which vibrates the control column"),
 ("Under what conditions does the automatic nose-down trim function switch on?", FR, [2], "paraphrase", "MCAS is activated only during manual flight, with flaps up"),
 ("How big a gap between the two speed readings sets off a warning, and for how long?", FR, [2], "paraphrase", "disagree by more than 5 knots for more than 5 seconds"),
 ("What four modifications does the regulator want made to the aircraft?", FR, [2], "paraphrase", "the FAA proposes to require four design changes"),
 ("Will the updated flight computer rely on one vane or on both to decide when to trim?", FR, [3], "paraphrase", "would use inputs from both AOA sensors to activate MCAS"),
 ("How often may the anti-stall system push the nose down during one high-angle episode?", FR, [3], "paraphrase", "would permit only one activation of MCAS per sensed high AOA event"),
 ("What size of difference between the two angle vanes triggers the mismatch alert on the displays?", FR, [3], "paraphrase", "More than 10 degrees difference for more than 10 seconds"),
 ("Which checklist steps must the crew know by heart?", FR, [3], "paraphrase", "these items are commonly known as memory steps"),
 ("Were some jets handed over to airlines without the sensor mismatch warning?", FR, [3], "paraphrase", "Some 737 MAX airplanes were delivered without this alert feature, by error"),
 ("How will the revised procedure keep wrong altitude data from reaching air traffic controllers?", FR, [3], "paraphrase", "erroneous altitude information is not transmitted via the transponder"),
 ("What should the crew do first when the tail trim keeps moving by itself?", FR, [4], "paraphrase", "use their thumb-actuated trim switch to reduce forces on the control column"),
 ("Should the pilots depart if the out-of-trim light is lit while the plane is still parked?", FR, [4], "paraphrase", "the checklist will instruct the flightcrew to not take off"),
 ("Why must the cables for the tail trim be rerouted?", FR, [4], "paraphrase", "does not meet the criteria specified in 14 CFR 25.1707"),
 ("When were these jets banned from flying in the United States?", FR, [4], "paraphrase", "On March 13, 2019, the FAA issued an Emergency Order of Prohibition"),
 ("How will mechanics check that each angle sensor gives an accurate reading?", FR, [4], "paraphrase", "This test uses a fixture to position the AOA vane"),
 ("How many American-registered planes are affected by the proposal?", FR, [5], "paraphrase", "affects 73 airplanes of U.S. registry"),
 ("Which foreign aviation authorities will help evaluate the pilot training?", FR, [5], "paraphrase", "Transport Canada Civil Aviation (TCCA), and the EASA"),
 ("What does rerouting the trim wiring cost for each plane?", FR, [6], "paraphrase", "Up to $10,505"),
 ("On average, what does it cost an airline to update its list of equipment that may be inoperative?", FR, [6], "paraphrase", "average total cost per operator to be $7,650"),
 ("Will the manufacturer pay for some of the repairs?", FR, [6], "paraphrase", "may be covered under warranty"),
 ("Which flight control computer software version must be installed?", FR, [6], "keyword", "install FCC OPS software version P12.1.2"),
 ("Is a special flight permit required for the operational readiness flight?", FR, [14], "keyword", "A special flight permit is not required to accomplish the operational readiness flight"),
 ("Which Swiss single-engine plane has a problem with its landing gear springs?", FR, [15], "paraphrase", "seizing of a main landing gear (MLG) spring pack assembly"),
 ("How many people live in Indonesia?", "google-doc-document.pdf", [1], "keyword", "273.879.750"),
 ("Should mistakes be ignored quietly?", "google-doc-document.pdf", [1], "paraphrase", "Errors should never pass silently."),
 ("Which lawyer argued on behalf of the prison warden?", "scotus-transcript-p1.pdf", [1], "paraphrase", "STEVEN E. MERCER, ESQ., Deputy Attorney General"),
 ("On what day did the Supreme Court hear the Knowles v. Mirzayance case?", "scotus-transcript-p1.pdf", [1], "keyword", "Tuesday, January 13, 2009"),
 ("Which languages are official in Belgium?", "multicolumn.pdf", [3], "keyword", "Belgium 11.5 30,689 Brussels Dutch, French, German"),
 ("What is the capital city of Finland?", "multicolumn.pdf", [3], "keyword", "Finland 5.5 338,424 Helsinki"),
 ("Which document is placeholder text meant to show what a typeface looks like?", "pdflatex-4-pages.pdf", [1, 2, 3, 4], "paraphrase", "gives you information about the selected font"),
 ("Wie viel kostet eine gedruckte Ausgabe des Skripts?", "GeoTopo-komprimiert.pdf", [2], "paraphrase", "für 10 Euro"),
 ("Welches Problem der Geometrie blieb über zweitausend Jahre ungelöst?", "GeoTopo-komprimiert.pdf", [68], "paraphrase", "über 2000 Jahre nicht gelöst"),
 ("Wann heißt ein topologischer Raum kompakt?", "GeoTopo-komprimiert.pdf", [18], "keyword", "Ein topologischer Raum X heißt kompakt"),
 # identifier queries (issue 23): what a user types to find an exact docket / section / part number, name or
 # figure; the evidence is the identifier as printed, and the pages are every page of the file that holds it
 # (check_labelled.py: on exactly those pages, and in no other PDF of the corpus)
 ("FAA-2020-0686", FR, [1, 5, 6], "identifier", "FAA–2020–0686"),
 ("FAA-2020-0746", FR, [15], "identifier", "FAA–2020–0746"),
 ("2274-COL-AC2-26", FR, [6], "identifier", "2274–COL–AC2–26"),
 ("KNKT.18.10.35.04", FR, [2], "identifier", "KNKT.18.10.35.04"),
 ("ET-AVJ", FR, [2], "identifier", "ET–AVJ"),
 ("737-27-1318", FR, [4, 5, 14], "identifier", "737–27–1318"),
 ("Amendment 39-19512", FR, [2, 6], "identifier", "Amendment 39–19512"),
 ("§ 39.13", FR, [2, 6], "identifier", "39.13"),  # p. 2 cites it as "14 CFR 39.13"
 ("14 CFR 21.197", FR, [14], "identifier", "14 CFR 21.197"),
 ("Executive Order 13132", FR, [6], "identifier", "Executive Order 13132"),
 ("22-11-05-02B", FR, [14], "identifier", "22–11–05–02B"),
 ("PC-12/47E", FR, [15], "identifier", "PC–12/47E"),
 ("MC 110-SK57", FR, [1, 15], "identifier", "MC 110–SK57"),
 ("Lance T. Gant", FR, [15], "identifier", "Lance T. Gant"),
 ("Komite Nasional Keselamatan Transportasi", FR, [2], "identifier", "Komite Nasional Keselamatan Transportasi"),
 ("figure 10", FR, [4, 13, 14], "identifier", "figure 10"),
 ("No. 07-1315", "scotus-transcript-p1.pdf", [1], "identifier", "No. 07-1315"),
 ("Charles M. Sevilla", "scotus-transcript-p1.pdf", [1], "identifier", "CHARLES M. SEVILLA"),
 ("78,866", "multicolumn.pdf", [3], "identifier", "78,866"),
 ("Table 1", "multicolumn.pdf", [3], "identifier", "Table 1"),
 ("83,190,556", "google-doc-document.pdf", [1], "identifier", "83,190,556"),
 ("Huardest gefburn", "pdflatex-4-pages.pdf", [1, 2, 3, 4], "identifier", "Huardest gefburn"),
 ("ISBN 978-3519122265", "GeoTopo-komprimiert.pdf", [23], "identifier", "ISBN 978-3519122265"),
 ("Kunio Murasugi", "GeoTopo-komprimiert.pdf", [25], "identifier", "Kunio Murasugi"),
 ("Abbildung 2.13", "GeoTopo-komprimiert.pdf", [44], "identifier", "Abbildung 2.13"),
]


out = [{"id": f"q{i:02d}", "question": q, "file": f, "pages": pp, "kind": kind,
        "lang": "de" if f.startswith("GeoTopo") else "en", "evidence": ev}
       for i, (q, f, pp, kind, ev) in enumerate(Q, 1)]
bad, notes = check(out)
for line in notes:
    print("note", line, file=sys.stderr)
if bad:
    raise SystemExit("\n".join(["FAIL " + b for b in bad] + [f"{len(bad)} problems; {sys.argv[1]} not written"]))
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    for r in out:
        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(out), "entries:", {k: sum(r["kind"] == k for r in out) for k in ("paraphrase", "keyword", "identifier")})
