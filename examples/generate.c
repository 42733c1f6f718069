/* generate: continues a prompt with a model through the C API (mxlm.h), streaming the text.
 *
 *   generate MODEL PROMPT [N_PREDICT [TEMPERATURE]]
 *
 * MODEL is an .mxlm file, a GGUF file or an HF model directory. Prints the prompt, then the
 * continuation as it is generated; errors go to stderr with the library's message. */
#include <mxlm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int print_piece(void* user, int32_t token, const char* text, size_t len) {
  (void)user;
  (void)token;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 1; /* go on */
}

static int fail(const char* what, mxlm_status s) {
  fprintf(stderr, "generate: %s: %s (%s)\n", what, mxlm_last_error(), mxlm_status_name(s));
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL PROMPT [N_PREDICT [TEMPERATURE]]   (mxlm %s)\n", argv[0], mxlm_version(NULL, NULL, NULL));
    return 2;
  }
  mxlm_model* model = NULL;
  mxlm_context* ctx = NULL;
  mxlm_sampler* sampler = NULL;
  int32_t* prompt = NULL;
  int rc = 1;
  mxlm_status s;

  if ((s = mxlm_model_load(argv[1], NULL, &model)) != MXLM_OK) return fail("load", s);
  if ((s = mxlm_context_create(model, NULL, &ctx)) != MXLM_OK) {
    rc = fail("context", s);
    goto done;
  }
  mxlm_sampler_params sp = mxlm_sampler_default_params();
  if (argc > 4) sp.temperature = (float)atof(argv[4]);
  if ((s = mxlm_sampler_create(&sp, &sampler)) != MXLM_OK) {
    rc = fail("sampler", s);
    goto done;
  }
  /* Ask for the token count, then tokenize into a buffer of that size. */
  size_t n = 0;
  const size_t len = strlen(argv[2]);
  s = mxlm_tokenize(model, argv[2], len, MXLM_TOKENIZE_BOS, NULL, 0, &n);
  if (s != MXLM_OK && s != MXLM_ERR_BUFFER_TOO_SMALL) {
    rc = fail("tokenize", s);
    goto done;
  }
  prompt = malloc(n * sizeof(int32_t));
  if (!prompt || (s = mxlm_tokenize(model, argv[2], len, MXLM_TOKENIZE_BOS, prompt, n, &n)) != MXLM_OK) {
    rc = fail("tokenize", s);
    goto done;
  }
  mxlm_generate_params gp = mxlm_generate_default_params();
  if (argc > 3) gp.n_predict = atoi(argv[3]);
  mxlm_generate_stats st;
  fputs(argv[2], stdout);
  if ((s = mxlm_generate(ctx, sampler, prompt, n, &gp, print_piece, NULL, &st)) != MXLM_OK) {
    rc = fail("generate", s);
    goto done;
  }
  putchar('\n');
  fprintf(stderr, "generate: prompt %d tokens, generated %d tokens, %.1f tok/s\n", st.n_prompt, st.n_generated,
          st.gen_seconds > 0 ? st.n_generated / st.gen_seconds : 0.0);
  rc = 0;
done:
  free(prompt);
  mxlm_sampler_free(sampler);
  mxlm_context_free(ctx);
  mxlm_model_free(model);
  return rc;
}
