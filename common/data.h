/* data.h - the training bytes, and the counter-based generator behind them
 * and behind initialisation (DESIGN.md §2, §8 rule 6).
 *
 * The T+K+1 bytes of micro-batch i of step s are a pure function of
 * (seed, s, i): no data cursor is saved, and every stage computes its own
 * inputs (the stage holding embed) and targets (the stage holding head)
 * without talking to anyone. Bytes 0..T+K-1 are the embedding's context
 * (token t sees bytes t..t+K-1) and token t predicts byte t+K, so the
 * targets are bytes K..K+T-1; the final byte is generated but not read.
 *
 * Sources:
 *   synthetic  a seeded stream over an alphabet of A = 16 byte values
 *              ('a'..'p'): the next byte is f(previous two bytes), with
 *              f(a, b) = perm_b(a) for seeded random permutations perm_b,
 *              with probability 1-eps, otherwise uniform over the alphabet.
 *              Every context then has the same conditional distribution, so
 *              the entropy rate is exactly that distribution's entropy,
 *              far below the single-byte (unigram) entropy of about ln 16.
 *              Each micro-batch is a fresh run of the chain from a random
 *              two-byte start; with K >= 2 every target follows the chain.
 *   FILE       any file's bytes, read into memory once; micro-batch i of
 *              step s starts at a pseudo-random offset.
 *
 * Not here: tokenisation (bytes are tokens) and shuffling state.
 */
#ifndef BT_COMMON_DATA_H
#define BT_COMMON_DATA_H
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

/* The counter-based generator: a splitmix64-style hash of (seed, a, b, c).
 * Every call is independent of every other: no state. */
uint64_t bt_rng(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
/* Uniform in (0, 1], from the top 53 bits. */
double bt_rng_unit(uint64_t r);
/* Standard normal from one counter (Box-Muller on the two 32-bit halves). */
double bt_rng_normal(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

#define BT_SYNTH_ALPHABET 16
#define BT_SYNTH_EPS 0.05

typedef struct bt_data bt_data_t;

/* Opens the source named by m->data. For a file: missing, unreadable,
 * empty or shorter than K+T+1 bytes gives BT_EARG (or -errno) and a
 * one-line reason in err. */
int bt_data_open(const bt_model_config_t *m, bt_data_t **out, char *err, size_t errlen);
void bt_data_close(bt_data_t *d);

/* Bytes of one micro-batch: n = T + K + 1 of them into buf. */
size_t bt_data_batch_bytes(const bt_data_t *d);
int bt_data_batch(const bt_data_t *d, int64_t step, int mb, uint8_t *buf);

/* Entropies in nats per byte. The entropy rate is exact for synthetic data
 * and NAN for a file (unknown). The unigram entropy is exact for synthetic
 * data (f is a permutation of the older byte for each newer byte, so the
 * chain is doubly stochastic and every position is uniform over the
 * alphabet: ln A) and measured over the whole file otherwise. */
double bt_data_entropy_rate(const bt_data_t *d);
double bt_data_unigram_entropy(const bt_data_t *d);
int bt_data_is_synthetic(const bt_data_t *d);

#endif
