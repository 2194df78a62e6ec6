using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Tests.Support;
using Treaty.Core.Contracts;

namespace Treaty.AspNetCore.Tests.Barrier;

/// <summary>
/// The branch barrier's behaviour over HTTP, run against every participant database
/// (<see cref="SqliteBranchBarrierTests"/>, <see cref="PostgreSqlBranchBarrierTests"/>).
/// </summary>
public abstract class BranchBarrierCompliance : IAsyncLifetime
{
    private TestDatabase _database = null!;

    protected BarrierHost Host { get; private set; } = null!;

    protected abstract Task<TestDatabase> CreateDatabaseAsync();

    public async Task InitializeAsync()
    {
        _database = await CreateDatabaseAsync();
        Host = await BarrierHost.StartAsync(_database.Database);
    }

    public async Task DisposeAsync()
    {
        if (Host is not null)
        {
            await Host.DisposeAsync();
        }

        if (_database is not null)
        {
            await _database.DisposeAsync();
        }
    }

    private static string NewGid() => "g-" + Guid.NewGuid().ToString("N");

    [Fact]
    public async Task DuplicateAction_RunsHandlerOnce_ReturnsTheFirstAnswer()
    {
        var gid = NewGid();

        var first = await Host.CallAsync(gid, "action");
        var second = await Host.CallAsync(gid, "action");
        var third = await Host.CallAsync(gid, "action");

        first.Status.ShouldBe(200);
        first.Outcome.ShouldBe("executed");
        first.ContentType.ShouldBe("application/json");
        second.ShouldBe(first with { Outcome = "replayed" });
        third.ShouldBe(first with { Outcome = "replayed" });
        Host.Runs(gid, "action").ShouldBe(1);
        (await Host.LedgerAsync(gid)).ShouldBe((1, 0));
    }

    [Fact]
    public async Task ConcurrentDuplicates_RunHandlerOnce_AllGetTheSameAnswer()
    {
        var gid = NewGid();

        var answers = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Host.CallAsync(gid, "action", """{"delayMs":20}""")));

        answers.Select(a => (a.Status, a.Body)).Distinct().Count().ShouldBe(1);
        answers.Count(a => a.Outcome == "executed").ShouldBe(1);
        Host.Runs(gid, "action").ShouldBe(1);
        (await Host.LedgerAsync(gid)).ShouldBe((1, 0));
    }

    [Fact]
    public async Task CompensationAfterAction_CompensatesOnce()
    {
        var gid = NewGid();

        (await Host.CallAsync(gid, "action")).Status.ShouldBe(200);
        var compensation = await Host.CallAsync(gid, "compensate");
        var duplicate = await Host.CallAsync(gid, "compensate");

        compensation.Status.ShouldBe(200);
        compensation.Outcome.ShouldBe("executed");
        duplicate.ShouldBe(compensation with { Outcome = "replayed" });
        Host.Runs(gid, "compensate").ShouldBe(1);
        (await Host.LedgerAsync(gid)).ShouldBe((1, 1));
    }

    [Fact]
    public async Task CompensationWithoutAction_IsANullCompensation_HandlerNotRun()
    {
        var gid = NewGid();

        var answer = await Host.CallAsync(gid, "compensate");

        answer.Status.ShouldBe(200);
        answer.Outcome.ShouldBe("null-compensation");
        using var body = JsonDocument.Parse(answer.Body);
        body.RootElement.GetProperty("outcome").GetString().ShouldBe("null-compensation");
        body.RootElement.GetProperty("applied").GetBoolean().ShouldBeFalse();
        Host.Runs(gid, "compensate").ShouldBe(0);
        (await Host.LedgerAsync(gid)).ShouldBe((0, 0));
        (await Host.BarrierRowsAsync(gid)).ShouldBe(["compensate"]);
    }

    [Fact]
    public async Task ActionAfterItsCompensation_HasNoEffect_AndAnswersAlreadyCompensated()
    {
        var gid = NewGid();
        (await Host.CallAsync(gid, "compensate")).Outcome.ShouldBe("null-compensation");

        var late = await Host.CallAsync(gid, "action");
        var lateAgain = await Host.CallAsync(gid, "action");

        late.Status.ShouldBe(409);
        late.Outcome.ShouldBe("skipped-hanging");
        late.ContentType.ShouldBe("application/problem+json");
        using var problem = JsonDocument.Parse(late.Body);
        problem.RootElement.GetProperty("type").GetString().ShouldBe(TreatyBarrier.AlreadyCompensatedType);
        problem.RootElement.GetProperty("status").GetInt32().ShouldBe(409);
        lateAgain.ShouldBe(late with { Outcome = "replayed" });
        Host.Runs(gid, "action").ShouldBe(0);
        (await Host.LedgerAsync(gid)).ShouldBe((0, 0));
        (await Host.BarrierRowsAsync(gid)).ShouldBe(["action", "compensate"]);
    }

    [Fact]
    public async Task TryAfterItsCancel_HasNoEffect_ConfirmIsOnlyDeduplicated()
    {
        var cancelled = NewGid();
        (await Host.CallAsync(cancelled, "cancel")).Outcome.ShouldBe("null-compensation");
        (await Host.CallAsync(cancelled, "try")).Status.ShouldBe(409);
        Host.Runs(cancelled, "try").ShouldBe(0);

        var confirmed = NewGid();
        (await Host.CallAsync(confirmed, "try")).Outcome.ShouldBe("executed");
        (await Host.CallAsync(confirmed, "confirm")).Outcome.ShouldBe("executed");
        (await Host.CallAsync(confirmed, "confirm")).Outcome.ShouldBe("replayed");
        Host.Runs(confirmed, "confirm").ShouldBe(1);
    }

    [Fact]
    public async Task DefinitiveFailure_IsRecordedAndReplayed_WithNoEffect()
    {
        var gid = NewGid();

        var failure = await Host.CallAsync(gid, "action", """{"fail":true}""");
        var duplicate = await Host.CallAsync(gid, "action", """{"fail":true}""");

        failure.Status.ShouldBe(409);
        failure.Outcome.ShouldBe("executed");
        failure.ContentType.ShouldBe("application/problem+json");
        using (var problem = JsonDocument.Parse(failure.Body))
        {
            problem.RootElement.GetProperty("type").GetString().ShouldBe(BarrierHost.InsufficientFunds);
        }

        duplicate.ShouldBe(failure with { Outcome = "replayed" });
        Host.Runs(gid, "action").ShouldBe(1);
        (await Host.LedgerAsync(gid)).ShouldBe((0, 0)); // the handler's write was rolled back with the refusal

        // The coordinator compensates a failed step's saga; there is nothing to undo here.
        (await Host.CallAsync(gid, "compensate")).Outcome.ShouldBe("null-compensation");
        Host.Runs(gid, "compensate").ShouldBe(0);
    }

    [Fact]
    public async Task RefusedCompensation_IsNotRecorded_SoTheCoordinatorsRetryRunsAgain()
    {
        // A compensation can never fail for good: the coordinator retries it, so a 4xx must not
        // be replayed to those retries (that would leave the transaction stuck for ever).
        var gid = NewGid();
        (await Host.CallAsync(gid, "action")).Status.ShouldBe(200);

        var refused = await Host.CallAsync(gid, "compensate", """{"fail":true}""");
        var retry = await Host.CallAsync(gid, "compensate");

        refused.Status.ShouldBe(409);
        retry.Status.ShouldBe(200);
        retry.Outcome.ShouldBe("executed");
        Host.Runs(gid, "compensate").ShouldBe(2);
        (await Host.LedgerAsync(gid)).ShouldBe((1, 1)); // the refused run's write was rolled back
        (await Host.CallAsync(gid, "compensate")).Outcome.ShouldBe("replayed");
    }

    [Fact]
    public async Task HandlerThrows_Returns500_RecordsNothing_AndTheRetryRuns()
    {
        var gid = NewGid();
        Host.ThrowOnce(gid);

        var crashed = await Host.CallAsync(gid, "action");

        crashed.Status.ShouldBe(500);
        crashed.ContentType.ShouldBe("application/problem+json");
        crashed.Outcome.ShouldBeNull();
        (await Host.LedgerAsync(gid)).ShouldBe((0, 0));
        (await Host.BarrierRowsAsync(gid)).ShouldBeEmpty();

        var retry = await Host.CallAsync(gid, "action");

        retry.Status.ShouldBe(200);
        retry.Outcome.ShouldBe("executed");
        Host.Runs(gid, "action").ShouldBe(2);
        (await Host.LedgerAsync(gid)).ShouldBe((1, 0));
    }

    [Theory]
    [InlineData("not json", null, "body")]
    [InlineData("[1, 2]", null, "body")]
    [InlineData("""{"branch":"b1","op":"action","payload":{}}""", null, "gid")]
    [InlineData("""{"gid":"g","branch":"b1","op":"refund","payload":{}}""", null, "op")]
    [InlineData("""{"gid":"g","branch":7,"op":"action"}""", null, "branch")]
    [InlineData("""{"gid":"g","branch":"b1","op":"action"}""", "b2", "branch")]
    [InlineData("""{"gid":"g\ud800","branch":"b1","op":"action"}""", null, "gid")]
    public async Task MalformedEnvelope_Returns400NamingTheField(string body, string? branchHeader, string field)
    {
        var headers = branchHeader is null ? null : new Dictionary<string, string> { ["Treaty-Branch"] = branchHeader };

        var answer = await Host.PostAsync(body, headers);

        answer.Status.ShouldBe(400);
        answer.ContentType.ShouldBe("application/problem+json");
        using var problem = JsonDocument.Parse(answer.Body);
        problem.RootElement.GetProperty("type").GetString().ShouldBe(ProblemTypes.Validation);
        problem.RootElement.GetProperty("errors").TryGetProperty(field, out _).ShouldBeTrue(answer.Body);
    }

    [Fact]
    public async Task MissingBodyFields_AreTakenFromTheTreatyHeaders()
    {
        var gid = NewGid();

        var answer = await Host.PostAsync(
            """{"payload":{}}""",
            new Dictionary<string, string> { ["Treaty-Gid"] = gid, ["Treaty-Branch"] = "b1", ["Treaty-Op"] = "action" });

        answer.Status.ShouldBe(200);
        Host.Runs(gid, "action").ShouldBe(1);
        (await Host.BarrierRowsAsync(gid)).ShouldBe(["action"]);
    }

    [Fact]
    public async Task Branches_OfOneGid_AreIndependent()
    {
        var gid = NewGid();

        (await Host.CallAsync(gid, "compensate", branch: "b2")).Outcome.ShouldBe("null-compensation");
        var action = await Host.CallAsync(gid, "action", branch: "b1");

        action.Outcome.ShouldBe("executed");
        Host.Runs(gid, "action").ShouldBe(1);
    }

    [Theory]
    [InlineData("action")]
    [InlineData("try")]
    [InlineData("confirm")]
    [InlineData("prepare")]
    [InlineData("commit")]
    [InlineData("canCommit")]
    [InlineData("preCommit")]
    [InlineData("doCommit")]
    public async Task EveryProtocolsOp_Duplicates_RunTheHandlerOnce_AndReplayTheFirstAnswer(string op)
    {
        var gid = NewGid();

        var first = await Host.CallAsync(gid, op);
        var duplicate = await Host.CallAsync(gid, op);

        first.Status.ShouldBe(200);
        first.Outcome.ShouldBe("executed");
        duplicate.ShouldBe(first with { Outcome = "replayed" });
        Host.Runs(gid, op).ShouldBe(1);
    }

    [Theory]
    [InlineData("compensate")]
    [InlineData("cancel")]
    [InlineData("rollback")]
    [InlineData("abort")]
    public async Task EveryProtocolsUndo_WithoutItsForwardOp_IsRecorded_Answers200_HandlerNotRun(string op)
    {
        var gid = NewGid();

        var answer = await Host.CallAsync(gid, op);
        var duplicate = await Host.CallAsync(gid, op);

        answer.Status.ShouldBe(200);
        answer.Outcome.ShouldBe("null-compensation");
        duplicate.ShouldBe(answer with { Outcome = "replayed" });
        Host.Runs(gid, op).ShouldBe(0);
        (await Host.BarrierRowsAsync(gid)).ShouldBe([op]);
    }

    [Theory]
    [InlineData("action", "compensate")]
    [InlineData("try", "cancel")]
    [InlineData("prepare", "rollback")]
    [InlineData("canCommit", "abort")]
    [InlineData("preCommit", "abort")]
    public async Task EveryProtocolsForwardOp_AfterItsUndo_IsRefused409_AndNeverApplied(string forward, string undo)
    {
        var gid = NewGid();
        (await Host.CallAsync(gid, undo)).Outcome.ShouldBe("null-compensation");

        var late = await Host.CallAsync(gid, forward);

        late.Status.ShouldBe(409);
        late.Outcome.ShouldBe("skipped-hanging");
        late.Body.ShouldContain(TreatyBarrier.AlreadyCompensatedType);
        Host.Runs(gid, forward).ShouldBe(0);
        (await Host.LedgerAsync(gid)).ShouldBe((0, 0));
        (await Host.PreparedStageAsync(gid)).ShouldBeNull();
    }

    [Theory]
    [InlineData("saga", "action,compensate")]
    [InlineData("tcc", "try,confirm")]
    [InlineData("tcc", "try,cancel")]
    [InlineData("2pc", "prepare,commit")]
    [InlineData("2pc", "prepare,rollback")]
    [InlineData("3pc", "canCommit,preCommit,doCommit")]
    [InlineData("3pc", "canCommit,abort")]
    [InlineData("3pc", "canCommit,preCommit,abort")]
    [InlineData("msg", "action")]
    public async Task EveryProtocolsRun_EachOpExecutesOnce_AndEveryRetryIsAReplay(string protocol, string ops)
    {
        var gid = NewGid();
        var sequence = ops.Split(',');

        foreach (var op in sequence)
        {
            (await Host.CallAsync(gid, op)).Outcome.ShouldBe("executed", $"{protocol} {op}");
        }

        foreach (var op in sequence)
        {
            (await Host.CallAsync(gid, op)).Outcome.ShouldBe("replayed", $"{protocol} {op}");
            Host.Runs(gid, op).ShouldBe(1);
        }

        (await Host.PreparedStageAsync(gid)).ShouldBeNull(); // every run ended with its outcome
    }

    [Theory]
    [InlineData("try", "confirm", "cancel")]
    [InlineData("try", "cancel", "confirm")]
    [InlineData("prepare", "commit", "rollback")]
    [InlineData("prepare", "rollback", "commit")]
    [InlineData("canCommit", "doCommit", "abort")]
    [InlineData("canCommit", "abort", "doCommit")]
    public async Task OutcomeAfterTheOppositeOutcome_IsRefused409Conflict_NeitherAppliedNorRecorded(string forward, string outcome, string opposite)
    {
        var gid = NewGid();
        (await Host.CallAsync(gid, forward)).Status.ShouldBe(200);
        (await Host.CallAsync(gid, outcome)).Status.ShouldBe(200);

        var conflict = await Host.CallAsync(gid, opposite);
        var retry = await Host.CallAsync(gid, opposite);

        conflict.Status.ShouldBe(409);
        conflict.Outcome.ShouldBe("conflict");
        conflict.ContentType.ShouldBe("application/problem+json");
        using (var problem = JsonDocument.Parse(conflict.Body))
        {
            problem.RootElement.GetProperty("type").GetString().ShouldBe(TreatyBarrier.OutcomeConflictType);
        }

        retry.ShouldBe(conflict);
        Host.Runs(gid, opposite).ShouldBe(0);
        (await Host.BarrierRowsAsync(gid)).ShouldNotContain(opposite);
    }

    [Fact]
    public void MapTreatyBranch_SamePatternTwice_FailsAtStartup()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Services.AddSingleton<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(Path.GetTempPath(), "unused.db")));
        builder.Services.AddTreatyBarrier();
        using var app = builder.Build();
        app.MapTreatyBranch("/x", (context, _) => Task.FromResult(context.Ok()));

        Should.Throw<InvalidOperationException>(() => app.MapTreatyBranch("/x", (context, _) => Task.FromResult(context.Ok())))
            .Message.ShouldContain("already mapped");
    }

    [Fact]
    public void MapTreatyBranch_WithoutAddTreatyBarrier_FailsAtStartup()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Services.AddSingleton<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(Path.GetTempPath(), "unused.db")));
        using var app = builder.Build();

        Should.Throw<InvalidOperationException>(() =>
            app.MapTreatyBranch("/x", (context, _) => Task.FromResult(context.Ok())))
            .Message.ShouldContain("AddTreatyBarrier");
    }
}

public sealed class SqliteBranchBarrierTests : BranchBarrierCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => Task.FromResult(TestDatabase.Sqlite("barrier"));
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlBranchBarrierTests(PostgresFixture postgres) : BranchBarrierCompliance
{
    protected override Task<TestDatabase> CreateDatabaseAsync() => TestDatabase.PostgreSqlAsync(postgres, "barrier");
}
