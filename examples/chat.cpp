// chat: a multi-turn loop over the C++ wrapper (mxlm.hpp): one user turn per line of stdin, the
// reply streamed to stdout.
//
//   chat MODEL [N_PREDICT]
//
// Each turn renders the whole conversation with the model's chat template (the plain "User: /
// Assistant:" fallback for a model without one) and evaluates only what the context does not
// hold yet: the rendered text behind the previous turn's, tokenized with its special tokens as
// their ids. A reply ends where the template ends a turn (EOS or its end-of-turn token), at
// N_PREDICT tokens, or, with the plain fallback, at its first line break.
#include <cstdlib>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <mxlm.hpp>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " MODEL [N_PREDICT]\n";
    return 2;
  }
  try {
    mxlm::Model model(argv[1]);
    const bool templated = model.info().has_chat_template != 0;
    mxlm::Context ctx(model);
    mxlm_sampler_params sp = mxlm_sampler_default_params();
    sp.temperature = 0;  // greedy: the same replies every run
    mxlm::Sampler sampler(sp);
    mxlm_generate_params gp = mxlm::generate_params(argc > 2 ? std::atoi(argv[2]) : 64);
    gp.stop_at_end_of_turn = 1;

    std::vector<std::pair<std::string, std::string>> messages;
    std::string held;                // the rendered conversation the context holds (or is about to)
    std::vector<int32_t> pending;    // a reply's last token: sampled, not yet evaluated
    std::string line;
    while (std::getline(std::cin, line)) {
      messages.emplace_back("user", line);
      const std::string text = model.apply_chat_template(messages, true);
      std::vector<int32_t> turn;
      if (!held.empty() && text.compare(0, held.size(), held) == 0) {
        turn = pending;  // the context holds `held`: evaluate what follows it
        for (int32_t t : model.tokenize_chat(text.substr(held.size()), true)) turn.push_back(t);
      } else {
        ctx.reset();  // the template rewrote earlier text: evaluate the whole conversation
        turn = model.tokenize_chat(text, false);
      }
      std::string reply;
      int32_t last = -1;
      const mxlm_generate_stats st = ctx.generate(sampler, turn, gp, [&](int32_t id, std::string_view piece) {
        if (!templated && piece.find('\n') != std::string_view::npos) return false;  // the reply's line is done
        last = id;
        reply += piece;
        std::cout << piece << std::flush;
        return true;
      });
      std::cout << "\n";
      std::cerr << "chat: turn evaluated " << st.n_prompt << " new tokens, context " << ctx.info().n_past << " tokens\n";
      // The context now holds the turn and the reply's tokens but the one that ended it: EOS or
      // an end-of-turn token (the next rendering writes it again), a line break the plain
      // fallback stopped at, or, for a reply cut at N_PREDICT, its last token, which opens the
      // next turn.
      messages.emplace_back("assistant", reply);
      held = text + reply;
      pending.clear();
      if (!st.hit_eos && !st.stopped && last >= 0) pending.push_back(last);
      if (st.context_full) {
        std::cerr << "chat: the context is full; the conversation starts over\n";
        messages.clear();
        held.clear();
        pending.clear();
        ctx.reset();
      }
    }
  } catch (const mxlm::Error& e) {
    std::cerr << "chat: " << e.what() << " (" << mxlm_status_name(e.status()) << ")\n";
    return 1;
  }
  return 0;
}
