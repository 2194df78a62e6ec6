using Treaty.AspNetCore.Barrier;

namespace Treaty.Simulation.Harness;

/// <summary>A participant's answer to one branch call: an HTTP status and a JSON body.</summary>
internal readonly record struct ParticipantReply(int Status, string Body)
{
    public static ParticipantReply Ok(string body) => new(200, body);

    public static ParticipantReply Declined(string why) => new(409, why);
}

/// <summary>
/// The branch barrier of a simulated participant: the rows of the kit's barrier table, kept in
/// memory per (gid, branch) and written in the same local transaction as the business effect (here:
/// the same scheduler event). What to do with a call is not decided here but by the participant
/// kit's own <see cref="BarrierRules"/> (Treaty.AspNetCore), the function the real participants'
/// SQL barrier calls: a duplicate replays the stored answer, a compensation whose forward op did not
/// apply is a null compensation (200, the handler does not run), a forward op arriving after its
/// compensation is refused with 409 <c>branch-already-compensated</c> (the handler does not run).
/// <paramref name="policy"/> can bend the decision, for the known-bad variants.
/// </summary>
internal sealed class SimBarrier(Func<BarrierDecision, BarrierDecision>? policy = null)
{
    /// <summary>What the kit answers (409, problem+json) to a forward op that arrives after its compensation.</summary>
    public const string AlreadyCompensatedType = BranchBarrier.AlreadyCompensatedType;

    private readonly Dictionary<(string Gid, string Branch), Rows> _rows = [];

    public int NullCompensations { get; private set; }

    public int SkippedHanging { get; private set; }

    public int Replayed { get; private set; }

    /// <summary>
    /// Runs <paramref name="op"/> (the op on the wire: action, compensate...) of (gid, branch)
    /// through the barrier; <paramref name="handler"/> runs only when the rules say so, and must
    /// apply its writes only when it answers 2xx (a definitive 4xx applies nothing, as the kit's
    /// savepoint guarantees).
    /// </summary>
    public ParticipantReply Execute(string gid, string branch, string op, Func<ParticipantReply> handler, out BarrierDecision decision)
    {
        if (!_rows.TryGetValue((gid, branch), out var rows))
        {
            rows = new Rows();
            _rows[(gid, branch)] = rows;
        }

        decision = BarrierRules.Decide(rows.Records, op);
        if (policy is not null)
        {
            decision = policy(decision);
        }

        ParticipantReply reply;
        switch (decision)
        {
            case BarrierDecision.ReplayStored:
                Replayed++;
                return rows.Replies[rows.Records.FindIndex(r => string.Equals(r.Op, op, StringComparison.Ordinal))];
            case BarrierDecision.NullCompensation:
                NullCompensations++;
                reply = ParticipantReply.Ok($$"""{"gid":"{{gid}}","branch":"{{branch}}","op":"{{op}}","outcome":"null-compensation","applied":false}""");
                break;
            case BarrierDecision.SkipHanging:
                SkippedHanging++;
                reply = new ParticipantReply(409, $$"""{"type":"{{AlreadyCompensatedType}}","title":"Branch already compensated","status":409}""");
                break;
            default:
                reply = handler();
                break;
        }

        var outcome = BarrierRules.OutcomeOf(decision, reply.Status);
        if (!BarrierRules.Records(op, outcome))
        {
            return reply; // a refused compensation or final op: not recorded, the retry runs again
        }

        rows.Records.Add(new BarrierRecord(op, outcome));
        rows.Replies.Add(reply);
        return reply;
    }

    /// <summary>The kit minus hanging prevention: a forward op after its compensation runs its handler.</summary>
    public static BarrierDecision WithoutHangingPrevention(BarrierDecision decision) =>
        decision == BarrierDecision.SkipHanging ? BarrierDecision.RunHandler : decision;

    private sealed class Rows
    {
        public List<BarrierRecord> Records { get; } = new(2);

        public List<ParticipantReply> Replies { get; } = new(2);
    }
}
