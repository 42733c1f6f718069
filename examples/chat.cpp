// chat: a multi-turn loop over the C++ wrapper (mxlm.hpp): one user turn per line of stdin, the
// reply streamed to stdout. Each turn evaluates only its new tokens: the context keeps the
// conversation, and the reply's last token (sampled, not yet evaluated) opens the next turn.
//
//   chat MODEL [N_PREDICT]
//
// The turns are framed as plain "User: ... / Assistant:" text and a reply ends at its first line
// break; a model's own chat template is what `mxlm chat` renders.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <mxlm.hpp>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " MODEL [N_PREDICT]\n";
    return 2;
  }
  try {
    mxlm::Model model(argv[1]);
    mxlm::Context ctx(model);
    mxlm_sampler_params sp = mxlm_sampler_default_params();
    sp.temperature = 0;  // greedy: the same replies every run
    mxlm::Sampler sampler(sp);
    const int n_predict = argc > 2 ? std::atoi(argv[2]) : 64;
    std::vector<int32_t> pending;  // the last reply token, evaluated with the next turn
    std::string line;
    bool first = true;
    while (std::getline(std::cin, line)) {
      std::vector<int32_t> turn = pending;
      for (int32_t t : model.tokenize((first ? "" : "\n") + std::string("User: ") + line + "\nAssistant:", first)) turn.push_back(t);
      first = false;
      int32_t last = -1;
      const mxlm_generate_stats st =
          ctx.generate(sampler, turn, mxlm::generate_params(n_predict, true), [&](int32_t id, std::string_view text) {
            last = id;
            if (text.find('\n') != std::string_view::npos) return false;  // the reply's line is done
            std::cout << text << std::flush;
            return true;
          });
      std::cout << "\n";
      std::cerr << "chat: turn evaluated " << st.n_prompt << " new tokens, context " << ctx.info().n_past << " tokens\n";
      // A reply cut at n_predict ends with a token that was sampled, not evaluated: it opens the
      // next turn. One that broke the line or ended the text is dropped (the next turn starts
      // with its own line break).
      pending.clear();
      if (!st.stopped && !st.hit_eos && last >= 0) pending.push_back(last);
    }
  } catch (const mxlm::Error& e) {
    std::cerr << "chat: " << e.what() << " (" << mxlm_status_name(e.status()) << ")\n";
    return 1;
  }
  return 0;
}
