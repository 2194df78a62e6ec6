using System.Globalization;
using Treaty.AspNetCore.InDoubt;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>How a participant's in-doubt resolver behaves; everything but <see cref="Kit"/> is a known-bad variant.</summary>
internal enum ResolverPolicy
{
    /// <summary>Asks the coordinator and does what the kit's <see cref="InDoubtRules.Decide"/> says.</summary>
    Kit,

    /// <summary>2PC: a prepared participant that times out rolls back on its own, without asking.</summary>
    TwoPhaseDecidesAlone,
}

/// <summary>
/// The in-doubt resolver of one participant: a 2PC branch that voted YES (prepare) or a 3PC branch
/// that voted YES (canCommit) or acknowledged preCommit, and heard no outcome within the
/// participant's timeout, asks the coordinator — over the simulated network, so the question and
/// its answer can be lost, delayed or cut by a partition — what <c>GET /api/v1/transactions/{gid}</c>
/// would say (404 when there is no such transaction, else its status and decision), and acts
/// through the kit's <see cref="InDoubtRules.Decide"/>: it runs the branch's commit or rollback
/// locally, through its barrier under the key the coordinator uses (<c>{gid}/{branch}/{op}</c>), so
/// the coordinator's own call later is a duplicate. It asks again while the answer is "wait".
/// <para>
/// "Unreachable" is concluded only when every question asked during a whole timeout went
/// unanswered (at least <see cref="UnreachableQuestions"/> of them): one lost message is not a dead
/// coordinator. A 2PC participant never decides alone on it; a 3PC participant applies the
/// termination rule. Outside the partition mode the coordinator's outages (crash and restart) add
/// up to less than the 3PC timeout — 3PC's synchrony assumption — so only a partition longer than
/// the timeout makes a 3PC participant decide alone.
/// </para>
/// </summary>
internal sealed class InDoubtResolver
{
    /// <summary>Questions that must all go unanswered, over at least one timeout, before the coordinator counts as unreachable.</summary>
    public const int UnreachableQuestions = 20;

    private static readonly TimeSpan QuestionTimeout = TimeSpan.FromMilliseconds(500);

    private readonly SimScheduler _scheduler;
    private readonly SimNetwork _network;
    private readonly ParticipantHost _host;
    private readonly Func<(SimNode Node, TransactionEngine Engine)> _coordinator;
    private readonly Action<Func<Task>> _spawn;
    private readonly Random _random;
    private readonly ResolverPolicy _policy;
    private readonly Dictionary<(string Gid, string Branch), (long Since, int Failures)> _unanswered = [];
    private int _questions;

    public InDoubtResolver(
        SimScheduler scheduler,
        SimNetwork network,
        ParticipantHost host,
        Func<(SimNode Node, TransactionEngine Engine)> coordinator,
        Action<Func<Task>> spawn,
        Random random,
        TimeSpan twoPhaseTimeout,
        TimeSpan threePhaseTimeout,
        ResolverPolicy policy)
    {
        _scheduler = scheduler;
        _network = network;
        _host = host;
        _coordinator = coordinator;
        _spawn = spawn;
        _random = random;
        _policy = policy;
        TwoPhaseTimeout = twoPhaseTimeout;
        ThreePhaseTimeout = threePhaseTimeout;
        host.Service.InDoubtChanged = (id, entry) => Schedule(id, entry, TimeoutOf(entry));
        host.Started = () =>
        {
            // A restarted participant reads its durable in-doubt table and starts over (what it had
            // counted in memory of unanswered questions is gone).
            _unanswered.Clear();
            foreach (var (id, entry) in host.Service.InDoubt)
            {
                Schedule(id, entry, TimeoutOf(entry));
            }
        };
    }

    public TimeSpan TwoPhaseTimeout { get; }

    public TimeSpan ThreePhaseTimeout { get; }

    public int Questions => _questions;

    public int LocalCommits { get; private set; }

    public int LocalAborts { get; private set; }

    /// <summary>3PC termination rule applied alone (the coordinator unreachable for a whole timeout).</summary>
    public int DecidedAlone { get; private set; }

    private TimeSpan TimeoutOf(InDoubtEntry entry) => entry.Protocol == Protocol.ThreePhaseCommit ? ThreePhaseTimeout : TwoPhaseTimeout;

    private void Schedule((string Gid, string Branch) id, InDoubtEntry entry, TimeSpan delay)
    {
        var generation = entry.Generation;
        var node = _host.Node;
        _scheduler.At(node, delay, () => Check(id, generation, node));
    }

    private bool Current((string Gid, string Branch) id, int generation, SimNode node, out InDoubtEntry entry) =>
        _host.Service.InDoubt.TryGetValue(id, out entry!) && entry.Generation == generation && _host.Node == node;

    private void Check((string Gid, string Branch) id, int generation, SimNode node)
    {
        if (!Current(id, generation, node, out var entry))
        {
            return;
        }

        if (_policy == ResolverPolicy.TwoPhaseDecidesAlone && entry.Stage == PreparedStage.Prepared)
        {
            Trace(node, $"{id.Gid}.{id.Branch} in doubt for {TimeoutOf(entry).TotalMilliseconds:0}ms: rolls back on its own (known-bad variant)");
            Act(id, entry, InDoubtAction.Abort, node);
            return;
        }

        var q = $"q{(++_questions).ToString(CultureInfo.InvariantCulture)}";
        var answered = false;
        void Answer(CoordinatorAnswer answer)
        {
            if (answered)
            {
                return;
            }

            answered = true;
            OnAnswer(id, generation, node, q, answer);
        }

        _scheduler.At(node, QuestionTimeout, () =>
        {
            if (!answered)
            {
                Trace(node, $"{q} no answer after {QuestionTimeout.TotalMilliseconds:0}ms");
                Answer(CoordinatorAnswer.Unreachable);
            }
        });
        Trace(node, $"{q} {id.Gid}.{id.Branch} in doubt ({entry.Stage}): GET /transactions/{id.Gid}");
        (SimNode Node, TransactionEngine Engine) picked = default;
        _network.Exchange<CoordinatorAnswer>(
            node,
            q,
            _host.Service.Name,
            () => (picked = _coordinator()).Node,
            (coordinatorNode, back) =>
            {
                // The instance the question reached answers it.
                var engine = picked.Engine!;
                _spawn(async () =>
                {
                    var state = await engine.GetAsync(id.Gid, CancellationToken.None);
                    back(state is null ? CoordinatorAnswer.UnknownTransaction : InDoubtRules.FromView(state.Status.ToWire(), state.Outcome?.ToWire()));
                });
            },
            CoordinatorAnswer.Unreachable,
            Answer);
    }

    private void OnAnswer((string Gid, string Branch) id, int generation, SimNode node, string q, CoordinatorAnswer answer)
    {
        if (!Current(id, generation, node, out var entry))
        {
            return;
        }

        var heard = answer;
        if (answer == CoordinatorAnswer.Unreachable)
        {
            var now = _scheduler.NowTicks;
            var (since, failures) = _unanswered.GetValueOrDefault(id, (now, 0));
            _unanswered[id] = (since, ++failures);
            if (failures < UnreachableQuestions || now - since < TimeoutOf(entry).Ticks)
            {
                heard = CoordinatorAnswer.Undecided; // not yet: one lost message is not a dead coordinator
            }
        }
        else
        {
            _unanswered.Remove(id);
        }

        var action = InDoubtRules.Decide(entry.Stage, heard);
        Trace(node, $"{q} {id.Gid}.{id.Branch} answer {answer}{(heard != answer ? $" ({_unanswered[id].Failures} unanswered, asking again)" : "")} -> {action}");
        if (action == InDoubtAction.Wait)
        {
            var retry = heard != answer || answer == CoordinatorAnswer.Unreachable
                ? TimeSpan.FromTicks(Math.Max(TimeoutOf(entry).Ticks / UnreachableQuestions, TimeSpan.FromMilliseconds(50).Ticks))
                : TimeSpan.FromMilliseconds(100 + _random.Next(Math.Max(1, (int)TimeoutOf(entry).TotalMilliseconds / 2)));
            var gen = entry.Generation;
            _scheduler.At(node, retry, () => Check(id, gen, node));
            return;
        }

        if (answer == CoordinatorAnswer.Unreachable)
        {
            DecidedAlone++;
            var (since, failures) = _unanswered[id];
            Trace(node, $"{id.Gid}.{id.Branch}: the coordinator left {failures} questions unanswered over {TimeSpan.FromTicks(_scheduler.NowTicks - since).TotalMilliseconds:0}ms: the termination rule decides alone");
        }

        Act(id, entry, action, node);
    }

    private void Act((string Gid, string Branch) id, InDoubtEntry entry, InDoubtAction action, SimNode node)
    {
        var op = InDoubtRules.OperationFor(entry.Stage, action);
        var reply = _host.Service.Handle(new SimCall(id.Gid, id.Branch, op, $"{id.Gid}/{id.Branch}/{op}", Local: true), out var note);
        if (action == InDoubtAction.Commit)
        {
            LocalCommits++;
        }
        else
        {
            LocalAborts++;
        }

        _unanswered.Remove(id);
        Trace(node, $"{id.Gid}.{id.Branch} resolved locally: {op} -> {reply.Status.ToString(CultureInfo.InvariantCulture)} {note}");
    }

    private void Trace(SimNode node, string text) => _scheduler.Trace.Add(_scheduler, node.Name, text);
}
