/* multinode.c - `baton run` across nodes: flags and Slurm, the agent's
 * entry, and the coordinator's join and placement (multinode.h). */
#include "launcher/multinode.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/exitcodes.h"
#include "common/log.h"
#include "common/parse.h"
#include "common/slurm.h"
#include "launcher/agent.h"

void bt_mn_defaults(bt_mn_opts_t *m) {
  memset(m, 0, sizeof *m);
  m->nnodes = 1;
  m->rdzv_port = 29400;
  m->join_timeout_s = 300;
  m->node_timeout_s = 10;
  m->beat_s = 1;
}

static const char *const mn_flags[] = {"--nnodes",       "--node-rank",    "--rdzv",         "--job-id",
                                       "--secret-file",  "--stages-per-node", "--data-host", "--join-timeout",
                                       "--node-timeout", NULL};

int bt_mn_flag_known(const char *name) {
  for (int i = 0; mn_flags[i]; i++)
    if (!strcmp(name, mn_flags[i])) return 1;
  return 0;
}

const char *bt_mn_help(void) {
  return "\nmulti-node (docs/multinode.md; under srun the first four come from Slurm):\n"
         "  --nnodes N              nodes of the job (default 1)\n"
         "  --node-rank R           this node's rank; 0 coordinates\n"
         "  --rdzv HOST:PORT        the coordinator's address: rank 0 listens there,\n"
         "                          the others connect (port default 29400)\n"
         "  --job-id ID             the job's name, the same on every node\n"
         "  --secret-file PATH      the job secret (mode 0600), else BATON_SECRET_FILE\n"
         "                          or BATON_SECRET; never on the command line\n"
         "  --stages-per-node K     stages this node runs (default: its GPUs with\n"
         "                          --backend cuda, else one per two cores)\n"
         "  --data-host ADDR        the address this node's workers bind for the data\n"
         "                          plane (default: rank 0 the --rdzv host, the others\n"
         "                          the address they reach the coordinator from)\n"
         "  --join-timeout S        every node joined within S (default 300)\n"
         "  --node-timeout S        a node silent this long is lost (default 10)\n";
}

static int split_hostport(const char *v, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(v, ':');
  const char *h = v;
  size_t hl = colon ? (size_t)(colon - v) : strlen(v);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [v6]:port */
    h++;
    hl -= 2;
  } else if (colon && memchr(v, ':', (size_t)(colon - v))) { /* a bare IPv6 address: no port */
    hl = strlen(v);
    colon = NULL;
  }
  if (!hl || hl >= hostlen) return -1;
  memcpy(host, h, hl);
  host[hl] = 0;
  if (colon && bt_parse_int(colon + 1, 1, 65535, port)) return -1;
  return 0;
}

int bt_mn_flag_parse(bt_mn_opts_t *m, const char *name, const char *v) {
  int iv;
  m->given = 1;
  if (!strcmp(name, "--nnodes") || !strcmp(name, "--node-rank") || !strcmp(name, "--stages-per-node")) {
    int lo = !strcmp(name, "--node-rank") ? 0 : 1, hi = !strcmp(name, "--stages-per-node") ? 256 : BT_HUB_MAX_NODES;
    if (bt_parse_int(v, lo, hi, &iv)) {
      fprintf(stderr, "baton run: %s: expected a whole number in [%d, %d], got '%s'\n", name, lo, hi, v);
      return 2;
    }
    if (!strcmp(name, "--nnodes")) {
      m->nnodes = (uint32_t)iv;
      m->given_nnodes = 1;
    } else if (!strcmp(name, "--node-rank")) {
      m->node_rank = (uint32_t)iv;
      m->given_rank = 1;
    } else
      m->stages_per_node = iv;
  } else if (!strcmp(name, "--rdzv")) {
    if (split_hostport(v, m->rdzv_host, sizeof m->rdzv_host, &m->rdzv_port)) {
      fprintf(stderr, "baton run: --rdzv: expected HOST:PORT, got '%s'\n", v);
      return 2;
    }
    m->given_rdzv = 1;
  } else if (!strcmp(name, "--job-id")) {
    size_t n = strlen(v);
    if (!n || n >= sizeof m->job_id || strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n) {
      fprintf(stderr, "baton run: --job-id: 1 to %zu of [A-Za-z0-9._-], got '%s'\n", sizeof m->job_id - 1, v);
      return 2;
    }
    snprintf(m->job_id, sizeof m->job_id, "%s", v);
  } else if (!strcmp(name, "--secret-file")) {
    m->secret_file = v;
  } else if (!strcmp(name, "--data-host")) {
    if (!v[0] || strlen(v) >= BT_HUB_HOST_MAX) {
      fprintf(stderr, "baton run: --data-host: expected a host name or address, got '%s'\n", v);
      return 2;
    }
    m->data_host = v;
  } else {
    double *dst = !strcmp(name, "--join-timeout") ? &m->join_timeout_s : &m->node_timeout_s;
    if (bt_parse_double(v, 0.1, 1e6, dst) < 0) {
      fprintf(stderr, "baton run: %s: expected seconds in [0.1, 1e6], got '%s'\n", name, v);
      return 2;
    }
  }
  return 0;
}

/* The devices of this node for --backend cuda, without linking CUDA: the
 * visible devices, else the device files. 0 when none are seen. */
static int count_gpus(void) {
  const char *vis = getenv("CUDA_VISIBLE_DEVICES");
  if (vis) {
    if (!vis[0]) return 0;
    int n = 1;
    for (const char *p = vis; *p; p++) n += *p == ',';
    return n;
  }
  int n = 0;
  DIR *d = opendir("/dev");
  if (!d) return 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, "nvidia", 6) && e->d_name[6] >= '0' && e->d_name[6] <= '9') n++;
  closedir(d);
  return n;
}

int bt_mn_resolve(bt_mn_opts_t *m, const char *backend) {
  bt_slurm_t sl;
  char why[512] = "";
  int rc = bt_slurm_from_environ(&sl, why, sizeof why);
  int slurm_multi = rc == 0 && sl.present && sl.nnodes > 1;
  /* Only a task of an srun step is one node of the job; the batch script
   * itself (sbatch without srun) runs on the first node alone. */
  if (slurm_multi && !getenv("SLURM_STEP_ID") && !getenv("SLURM_STEPID")) {
    if (!m->given_nnodes)
      bt_warn("a Slurm allocation of %d nodes, but not inside srun: this runs on one node (use `srun "
              "--ntasks-per-node=1 baton run ...`)",
              sl.nnodes);
    slurm_multi = 0;
  }
  if (rc < 0 && !m->given_nnodes) {
    /* A broken Slurm environment matters only when we would use it. */
    if (getenv("SLURM_JOB_ID")) {
      fprintf(stderr, "baton run: Slurm's environment: %s\n", why);
      bt_slurm_free(&sl);
      return 2;
    }
  }
  if (slurm_multi && !m->given_nnodes) {
    m->from_slurm = 1;
    m->nnodes = (uint32_t)sl.nnodes;
    if (!m->given_rank) m->node_rank = (uint32_t)sl.node_rank;
    if (!m->given_rdzv) {
      snprintf(m->rdzv_host, sizeof m->rdzv_host, "%s", sl.rdzv_host);
      const char *p = getenv("BATON_RDZV_PORT");
      if (p && bt_parse_int(p, 1, 65535, &m->rdzv_port)) {
        fprintf(stderr, "baton run: BATON_RDZV_PORT: expected a port, got '%s'\n", p);
        bt_slurm_free(&sl);
        return 2;
      }
    }
    if (!m->job_id[0]) snprintf(m->job_id, sizeof m->job_id, "slurm-%s", sl.job_id);
  }
  bt_slurm_free(&sl);
  if (m->nnodes <= 1) {
    if (m->given && m->nnodes <= 1 && (m->given_rank || m->given_rdzv)) {
      fprintf(stderr, "baton run: --node-rank and --rdzv need --nnodes N > 1 (or srun on several nodes)\n");
      return 2;
    }
    return 0;
  }
  if (m->node_rank >= m->nnodes) {
    fprintf(stderr, "baton run: --node-rank %u: the job has %u nodes (0..%u)\n", m->node_rank, m->nnodes,
            m->nnodes - 1);
    return 2;
  }
  if (!m->rdzv_host[0]) {
    fprintf(stderr, "baton run: --nnodes %u: --rdzv HOST:PORT is required (the coordinator's address)\n",
            m->nnodes);
    return 2;
  }
  if (!m->job_id[0]) {
    fprintf(stderr, "baton run: --nnodes %u: --job-id is required (the same on every node)\n", m->nnodes);
    return 2;
  }
  if (!m->stages_per_node) {
    if (!strcmp(backend, "cuda")) {
      m->stages_per_node = count_gpus();
      if (m->stages_per_node < 1) {
        fprintf(stderr, "baton run: --backend cuda: no GPU seen on this node; give --stages-per-node\n");
        return 2;
      }
    } else {
      long cores = sysconf(_SC_NPROCESSORS_ONLN);
      m->stages_per_node = cores >= 4 ? (int)(cores / 2) : 1;
      if (m->stages_per_node > 256) m->stages_per_node = 256;
    }
  }
  return 0;
}

static int load_secret(const bt_mn_opts_t *m, bt_secret_t *s) {
  char why[512] = "";
  int rc = bt_secret_load(m->secret_file, s, why, sizeof why);
  if (rc == -ENOENT && !m->secret_file) {
    fprintf(stderr,
            "baton run: a multi-node job needs its secret: --secret-file PATH (mode 0600), BATON_SECRET_FILE or "
            "BATON_SECRET\n");
    return 2;
  }
  if (rc < 0) {
    fprintf(stderr, "baton run: the job secret: %s\n", why[0] ? why : bt_strerror(rc));
    return 2;
  }
  return 0;
}

int bt_mn_run_agent(const bt_mn_opts_t *m, const char *ckpt_dir) {
  bt_secret_t *s = calloc(1, sizeof *s);
  if (!s) return BT_EXIT_FAILED;
  int rc = load_secret(m, s);
  if (rc) {
    free(s);
    return rc;
  }
  bt_agent_opts_t ao = {.rdzv_host = m->rdzv_host,
                        .rdzv_port = m->rdzv_port,
                        .node_rank = m->node_rank,
                        .job_id = m->job_id,
                        .secret = s,
                        .slots = (uint32_t)m->stages_per_node,
                        .data_host = m->data_host,
                        .ckpt_dir = ckpt_dir,
                        .join_timeout_s = m->join_timeout_s};
  bt_info("node %u of %u: joining the coordinator at %s:%d (job %s)", m->node_rank, m->nnodes, m->rdzv_host,
          m->rdzv_port, m->job_id);
  rc = bt_agent_run(&ao);
  memset(s, 0, sizeof *s);
  free(s);
  return rc;
}

int bt_mn_coord_start(bt_mn_coord_t *c, const bt_mn_opts_t *m, const char *ckpt_dir, uint32_t *slots) {
  memset(c, 0, sizeof *c);
  c->o = *m;
  if (!(c->secret = calloc(1, sizeof *c->secret)) || !(c->hosts = calloc(m->nnodes, sizeof *c->hosts)))
    return BT_EXIT_FAILED;
  int rc = load_secret(m, c->secret);
  if (rc) return rc;
  c->own_slots = (uint32_t)m->stages_per_node;
  snprintf(c->hosts[0], sizeof c->hosts[0], "%s", m->data_host ? m->data_host : m->rdzv_host);
  if (ckpt_dir && mkdir(ckpt_dir, 0777) < 0 && errno != EEXIST) {
    fprintf(stderr, "baton run: --ckpt-dir %s: %s\n", ckpt_dir, strerror(errno));
    return 2;
  }
  bt_hub_opts_t ho;
  bt_hub_opts_default(&ho);
  ho.bind_host = m->rdzv_host;
  ho.port = m->rdzv_port;
  ho.nnodes = m->nnodes;
  ho.secret = c->secret;
  ho.job_id = m->job_id;
  ho.ckpt_dir = ckpt_dir;
  ho.beat_ms = (int64_t)(m->beat_s * 1000);
  ho.node_timeout_ms = (int64_t)(m->node_timeout_s * 1000);
  char why[1024] = "";
  if ((rc = bt_hub_start(&ho, &c->hub, why, sizeof why)) < 0) {
    fprintf(stderr, "baton run: rendezvous on %s:%d: %s\n", m->rdzv_host, m->rdzv_port, why);
    return rc == BT_EARG ? 2 : BT_EXIT_RENDEZVOUS;
  }
  bt_info("coordinating job %s: waiting for %u node%s on %s:%d (join deadline %.0f s)", m->job_id, m->nnodes - 1,
          m->nnodes == 2 ? "" : "s", m->rdzv_host, bt_hub_port(c->hub), m->join_timeout_s);
  if ((rc = bt_hub_wait_joined(c->hub, m->join_timeout_s, why, sizeof why)) < 0) {
    fprintf(stderr, "baton run: rendezvous: %s\n", why);
    bt_mn_coord_stop(c, BT_EXIT_RENDEZVOUS);
    return rc == BT_ECONFIG ? 2 : BT_EXIT_RENDEZVOUS;
  }
  *slots = bt_mn_capacity(c);
  bt_info("all %u nodes joined: %u stages", m->nnodes, *slots);
  return 0;
}

uint32_t bt_mn_capacity(bt_mn_coord_t *c) {
  uint32_t cap = c->own_slots;
  for (uint32_t i = 1; i < c->o.nnodes; i++) {
    bt_hub_node_t n;
    if (bt_hub_node(c->hub, i, &n) == 0 && n.alive) cap += n.slots;
  }
  return cap > BT_MAX_STAGES ? BT_MAX_STAGES : cap;
}

int bt_mn_place(bt_mn_coord_t *c, uint32_t stages, uint32_t inc) {
  uint32_t k = 0;
  c->nodes_used = 0;
  for (uint32_t i = 0; i < c->o.nnodes && k < stages; i++) {
    uint32_t slots = c->own_slots;
    if (i > 0) {
      bt_hub_node_t n;
      if (bt_hub_node(c->hub, i, &n) < 0 || !n.alive) continue;
      slots = n.slots;
      snprintf(c->hosts[i], sizeof c->hosts[i], "%s", n.data_host);
    }
    uint32_t first = k;
    for (uint32_t j = 0; j < slots && k < stages; j++, k++) {
      c->stage_node[k] = i;
      c->stage_local[k] = j;
      c->stage_bind[k] = c->hosts[i];
    }
    for (uint32_t q = first; q < k; q++) c->node_stages[q] = k - first;
    if (k > first) c->nodes_used++;
  }
  if (k < stages) return BT_EPEER;
  uint8_t nonce[16];
  int rc = bt_random_bytes(nonce, sizeof nonce);
  if (rc < 0) return rc;
  char hex[33];
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", nonce[i]);
  snprintf(c->token_label, sizeof c->token_label, "data-plane %.100s %u %s", c->o.job_id, inc, hex);
  bt_auth_derive_hex(c->secret, c->token_label, c->token);
  return 0;
}

void bt_mn_coord_stop(bt_mn_coord_t *c, int exit_code) {
  if (c->hub) {
    char text[200];
    snprintf(text, sizeof text, "baton run: job %.100s ended with exit code %d (the coordinator's output says why)",
             c->o.job_id, exit_code);
    bt_hub_stop(c->hub, exit_code, exit_code ? text : "", 5.0);
    c->hub = NULL;
  }
  if (c->secret) memset(c->secret, 0, sizeof *c->secret);
  free(c->secret);
  c->secret = NULL;
  free(c->hosts);
  c->hosts = NULL;
}
