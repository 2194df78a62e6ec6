using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.Tests.Barrier;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.InDoubt;

/// <summary>
/// A real coordinator (in-process, SQLite) running 2PC and 3PC against kit participants on real
/// Kestrel and SQLite files, and the in-doubt resolver finishing what the coordinator's calls did
/// not.
/// </summary>
public sealed class InDoubtEndToEndTests(CoordinatorFixture fixture) : IClassFixture<CoordinatorFixture>, IAsyncLifetime
{
    private readonly List<IAsyncDisposable> _started = [];
    private readonly TestDatabase _database = TestDatabase.Sqlite("in-doubt-e2e");

    private InProcessCoordinator Coordinator => fixture.Coordinator;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var started in Enumerable.Reverse(_started))
        {
            await started.DisposeAsync();
        }

        await _database.DisposeAsync();
    }

    private async Task<InDoubtParticipant> StartParticipantAsync(TimeProvider time, TimeSpan after, TimeSpan pollInterval)
    {
        var participant = await InDoubtParticipant.StartAsync(new ParticipantSetup(_database.Database, time)
        {
            Coordinator = Coordinator.BaseAddress,
            After = after,
            PollInterval = pollInterval,
            FirstRecheckDelay = TimeSpan.FromMilliseconds(200),
            MaxRecheckDelay = TimeSpan.FromSeconds(1),
        });
        _started.Add(participant);
        return participant;
    }

    private static string NewGid(string prefix) => $"{prefix}-{Guid.NewGuid():N}";

    [Fact]
    public async Task TwoPhase_RollbackLostAfterTheCoordinatorGaveUp_IsRolledBackByTheResolver()
    {
        // Real clock and the real background loop: the resolver acts on its own once After passes —
        // long enough that the coordinator's notifications give up first even on a loaded machine.
        var participant = await StartParticipantAsync(TimeProvider.System, after: TimeSpan.FromSeconds(4), pollInterval: TimeSpan.FromMilliseconds(100));
        participant.Unavailable("rollback");
        var gid = NewGid("lost-rollback");

        var view = await Transactions.SubmitAsync(Coordinator, gid, "2pc", "10s",
            Transactions.TwoPhase("stock", participant.Url("branch"), Transactions.Quick(maxAttempts: 2)),
            Transactions.TwoPhase("payment", participant.Url("refuse"), Transactions.Quick(maxAttempts: 2)));

        view.Status.ShouldBe("aborted"); // presumed abort: forgotten at once, rollbacks best-effort
        await Transactions.WaitUntilAsync(() => Task.FromResult(participant.RefusedWith503("rollback") >= 2));
        await Task.Delay(300); // the coordinator's notifications have given up: it sends no more
        participant.RefusedWith503("rollback").ShouldBe(2);
        (await participant.HoldAsync(gid, "stock")).ShouldBe("held"); // still prepared, holding its stock

        participant.Available("rollback");
        await Transactions.WaitUntilAsync(async () => await participant.HoldAsync(gid, "stock") is null);

        participant.Runs(gid, "rollback").ShouldBe(1);
        participant.RanByResolver(gid, "rollback").ShouldBeTrue();
        (await participant.PreparedAsync(gid, "stock")).ShouldBeNull();
        (await participant.AvailableAsync()).ShouldBe(InDoubtParticipant.InitialStock);
    }

    [Fact]
    public async Task TwoPhase_CommitDecided_ParticipantDownForCommit_ResolverCommits_AndTheCoordinatorsRetryIsAReplay()
    {
        var time = new ManualTimeProvider(TimeProvider.System.GetUtcNow());
        var participant = await StartParticipantAsync(time, after: TimeSpan.FromSeconds(30), pollInterval: TimeSpan.FromHours(1));
        participant.Unavailable("commit");
        var gid = NewGid("commit-decided");

        var view = await Transactions.SubmitAsync(Coordinator, gid, "2pc", "0s",
            Transactions.TwoPhase("stock", participant.Url("branch"), Transactions.Quick(maxAttempts: 100)));
        await Transactions.WaitUntilAsync(() => Task.FromResult(participant.RefusedWith503("commit") >= 1));
        (await Transactions.GetAsync(Coordinator, gid)).Decision.ShouldBe("commit");

        time.Advance(TimeSpan.FromSeconds(30));
        var resolution = (await participant.ResolveAsync()).ShouldHaveSingleItem();

        resolution.ShouldBe(new InDoubtResolution(gid, "stock", PreparedStage.Prepared, CoordinatorAnswer.Commit, InDoubtAction.Commit, InDoubtResult.Resolved, BarrierDecision.RunHandler));
        (await participant.HoldAsync(gid, "stock")).ShouldBe("committed");

        participant.Available("commit");
        view = await Transactions.WaitForStatusAsync(Coordinator, gid, "committed");

        participant.Runs(gid, "commit").ShouldBe(1);
        participant.Answers(gid, "commit").Where(a => a != "503").ShouldAllBe(a => a == "replayed");
        participant.Answers(gid, "commit").ShouldContain("replayed");
        view.Branches.Single().Ops["commit"].LastStatusCode.ShouldBe(200);
    }

    [Fact]
    public async Task TwoPhase_GidTheCoordinatorNeverSaw_IsPresumedAbort_AndRolledBack()
    {
        var time = new ManualTimeProvider(TimeProvider.System.GetUtcNow());
        var participant = await StartParticipantAsync(time, after: TimeSpan.FromSeconds(30), pollInterval: TimeSpan.FromHours(1));
        var gid = NewGid("never-submitted");
        (await participant.CallAsync(gid, "prepare")).Status.ShouldBe(200);

        time.Advance(TimeSpan.FromSeconds(30));
        var resolution = (await participant.ResolveAsync()).ShouldHaveSingleItem();

        resolution.Answer.ShouldBe(CoordinatorAnswer.UnknownTransaction); // the real coordinator's 404 problem+json
        resolution.Result.ShouldBe(InDoubtResult.Resolved);
        (await participant.HoldAsync(gid)).ShouldBeNull();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ThreePhase_ThroughMapTreatyBranch_CommitsWhenAllVoteYes_AbortsEveryYesOnANo(bool allYes)
    {
        var participant = await StartParticipantAsync(TimeProvider.System, after: TimeSpan.FromSeconds(30), pollInterval: TimeSpan.FromHours(1));
        var gid = NewGid("3pc");

        var view = await Transactions.SubmitAsync(Coordinator, gid, "3pc", "10s",
            Transactions.ThreePhase("stock", participant.Url("branch"), Transactions.Quick(maxAttempts: 3)),
            Transactions.ThreePhase("payment", participant.Url(allYes ? "branch" : "refuse"), Transactions.Quick(maxAttempts: 3)));

        if (allYes)
        {
            view.Status.ShouldBe("committed");
            (await participant.HoldAsync(gid, "stock")).ShouldBe("committed");
            (await participant.HoldAsync(gid, "payment")).ShouldBe("committed");
            participant.Runs(gid, "preCommit").ShouldBe(2);
        }
        else
        {
            view.Status.ShouldBe("aborted");
            (await participant.HoldAsync(gid, "stock")).ShouldBeNull();
            participant.Runs(gid, "abort").ShouldBe(1);
            participant.Runs(gid, "preCommit").ShouldBe(0);
        }

        (await participant.PreparedAsync(gid, "stock")).ShouldBeNull();
        (await participant.PreparedAsync(gid, "payment")).ShouldBeNull();
    }
}
