using FsCheck;
using FsCheck.Fluent;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.Barrier;

/// <summary>A forward op and the compensation that undoes it.</summary>
public sealed record OpPair(string Forward, string Compensation)
{
    public override string ToString() => $"{Forward}/{Compensation}";
}

/// <summary>One delivery step: one call, or two calls sent at once.</summary>
public sealed record Delivery(bool[] Compensations)
{
    public override string ToString() =>
        Compensations.Length == 1 ? Name(Compensations[0]) : "(" + string.Join(" || ", Compensations.Select(Name)) + ")";

    private static string Name(bool compensation) => compensation ? "C" : "F";
}

/// <summary>A generated world for one (gid, branch): which protocol pair, whether the forward op refuses, the deliveries.</summary>
public sealed record Interleaving(OpPair Pair, bool ForwardFails, int DelayMs, Delivery[] Deliveries)
{
    public override string ToString() =>
        $"{Pair} forwardFails={ForwardFails} delay={DelayMs}ms: {string.Join(" ", Deliveries.Select(d => d.ToString()))}";
}

/// <summary>
/// Every interleaving of a forward op, its compensation and duplicates of either for one
/// (gid, branch) — sequential and concurrent, generated rather than hand-picked — ends as
/// "applied once and compensated once" or "nothing applied", or, only when no compensation was
/// delivered, "applied once"; and every delivery of one op gets the same answer.
/// </summary>
public abstract class BarrierInterleavingProperties : IAsyncLifetime
{
    private TestDatabase _database = null!;
    private BarrierHost _host = null!;

    protected abstract int Cases { get; }

    protected abstract Task<TestDatabase> CreateDatabaseAsync();

    public async Task InitializeAsync()
    {
        _database = await CreateDatabaseAsync();
        _host = await BarrierHost.StartAsync(_database.Database);
    }

    public async Task DisposeAsync()
    {
        if (_host is not null)
        {
            await _host.DisposeAsync();
        }

        if (_database is not null)
        {
            await _database.DisposeAsync();
        }
    }

    internal static Gen<Interleaving> Interleavings()
    {
        var one = Gen.Elements(false, true);
        var delivery = Gen.Frequency(
            (3, one.Select(c => new Delivery([c]))),
            (2, Gen.Zip(one, one).Select(p => new Delivery([p.Item1, p.Item2]))));
        return
            from pair in Gen.Elements(new OpPair("action", "compensate"), new OpPair("try", "cancel"), new OpPair("prepare", "rollback"), new OpPair("preCommit", "abort"))
            from fails in Gen.Frequency((4, Gen.Constant(false)), (1, Gen.Constant(true)))
            from delay in Gen.Elements(0, 0, 3)
            from length in Gen.Choose(1, 6)
            from deliveries in Gen.ArrayOf(delivery, length)
            select new Interleaving(pair, fails, delay, deliveries);
    }

    [Fact]
    public void AnyInterleaving_EndsAppliedAndCompensatedOnce_OrNothingApplied()
    {
        var config = Config.QuickThrowOnFailure.WithMaxTest(Cases);
        Check.One(config, Prop.ForAll(Interleavings().ToArbitrary(), world =>
        {
            var problems = Task.Run(() => RunAsync(world)).GetAwaiter().GetResult();
            return Prop.Label(problems.Count == 0, string.Join("; ", problems));
        }));
    }

    private async Task<List<string>> RunAsync(Interleaving world)
    {
        var gid = "p-" + Guid.NewGuid().ToString("N");
        var payload = $$"""{"fail":{{(world.ForwardFails ? "true" : "false")}},"delayMs":{{world.DelayMs}}}""";
        var answers = new List<(string Op, BranchAnswer Answer)>();
        foreach (var delivery in world.Deliveries)
        {
            var ops = delivery.Compensations.Select(c => c ? world.Pair.Compensation : world.Pair.Forward).ToArray();
            var results = await Task.WhenAll(ops.Select(op => _host.CallAsync(gid, op, payload)));
            answers.AddRange(ops.Zip(results));
        }

        var problems = new List<string>();
        var forwardDelivered = world.Deliveries.Any(d => d.Compensations.Contains(false));
        var compensationDelivered = world.Deliveries.Any(d => d.Compensations.Contains(true));
        var (applied, compensated) = await _host.LedgerAsync(gid);
        var forwardRuns = _host.Runs(gid, world.Pair.Forward);
        var compensationRuns = _host.Runs(gid, world.Pair.Compensation);

        foreach (var (op, answer) in answers)
        {
            if (answer.Status is not (200 or 409))
            {
                problems.Add($"{op} answered {answer.Status}: {answer.Body}");
            }
        }

        foreach (var group in answers.GroupBy(a => a.Op))
        {
            if (group.Select(a => (a.Answer.Status, a.Answer.Body)).Distinct().Count() != 1)
            {
                problems.Add($"the deliveries of {group.Key} got different answers");
            }
        }

        if (forwardRuns > 1 || compensationRuns > 1)
        {
            problems.Add($"handler ran {forwardRuns}x forward, {compensationRuns}x compensation");
        }

        var outcome = (applied, compensated) switch
        {
            (1, 1) => "applied and compensated once",
            (0, 0) => "nothing applied",
            (1, 0) when !compensationDelivered => "applied once, no compensation delivered",
            _ => null,
        };
        if (outcome is null)
        {
            problems.Add($"ended with {applied} applied and {compensated} compensated (balance {applied - compensated})");
        }

        if (world.ForwardFails && applied != 0)
        {
            problems.Add("a forward op that refused left an effect");
        }

        if (forwardDelivered && !compensationDelivered && !world.ForwardFails && applied != 1)
        {
            problems.Add("the forward op was delivered alone and never applied");
        }

        if (compensationRuns != compensated)
        {
            problems.Add($"the compensation handler ran {compensationRuns}x but {compensated} compensations were committed");
        }

        return problems;
    }
}

public sealed class SqliteBarrierInterleavingProperties : BarrierInterleavingProperties
{
    protected override int Cases => 300;

    protected override Task<TestDatabase> CreateDatabaseAsync() => Task.FromResult(TestDatabase.Sqlite("barrier-prop"));
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlBarrierInterleavingProperties(PostgresFixture postgres) : BarrierInterleavingProperties
{
    protected override int Cases => 60;

    protected override Task<TestDatabase> CreateDatabaseAsync() => TestDatabase.PostgreSqlAsync(postgres, "barrier_prop");
}
