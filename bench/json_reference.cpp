// The fastest JSON reader there is, simdjson, on the kernel benchmark's records: what reading them costs before
// any masking, batch framing or CRC, on this machine. bench/json_reference.py builds and runs this; see there.
//
// Input (argv[1]): the records, each a little-endian uint32 length and its bytes. Output: one line per reading,
// "name microseconds-per-pass", the best of `rounds` passes over all records (argv[2], default 9), each pass
// repeated `repeat` times (argv[3], default 100).
#include "simdjson.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace simdjson;

template <typename F>
static double best_us(int rounds, int repeat, F pass) {
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < repeat; i++) pass();
        double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / repeat;
        if (us < best) best = us;
    }
    return best;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int rounds = argc > 2 ? std::atoi(argv[2]) : 9, repeat = argc > 3 ? std::atoi(argv[3]) : 100;
    FILE *f = std::fopen(argv[1], "rb");
    if (!f) return 2;
    std::vector<padded_string> docs;
    uint32_t len;
    while (std::fread(&len, 4, 1, f) == 1) {
        std::string s(len, '\0');
        if (std::fread(s.data(), 1, len, f) != len) return 2;
        docs.emplace_back(s);
    }
    std::fclose(f);
    ondemand::parser od;
    dom::parser dp;
    size_t found = 0;

    // On demand, to customer.email and no further: the rest of each record is neither read nor checked.
    double first = best_us(rounds, repeat, [&] {
        for (auto &d : docs) {
            auto doc = od.iterate(d);
            found += doc["customer"]["email"].get_raw_json_string().value().raw()[0] != 0;
        }
    });
    // On demand, every member of the record and of customer visited (other values skipped by bracket depth),
    // customer.email read, the record's end checked: the walk the gateway's path rule makes (a later duplicate
    // key is masked too, and the record must be JSON to its end).
    double every = best_us(rounds, repeat, [&] {
        for (auto &d : docs) {
            auto doc = od.iterate(d);
            for (auto field : doc.get_object()) {
                if (field.unescaped_key().value() != "customer") continue;
                for (auto inner : field.value().get_object())
                    if (inner.unescaped_key().value() == "email")
                        found += inner.value().get_raw_json_string().value().raw()[0] != 0;
            }
            if (!doc.at_end()) std::abort();
        }
    });
    // The whole record parsed and validated into simdjson's tape, customer.email looked up.
    double dom = best_us(rounds, repeat, [&] {
        for (auto &d : docs) found += dp.parse(d).value()["customer"]["email"].get_string().value().size() != 0;
    });
    if (found == 0) return 3;
    std::printf("implementation %s\n", get_active_implementation()->name().c_str());
    std::printf("first %.2f\nevery %.2f\ndom %.2f\n", first, every, dom);
    return 0;
}
