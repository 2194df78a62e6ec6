using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.PreparedTransactions;
using Treaty.AspNetCore.Tests.Barrier;
using Treaty.AspNetCore.Tests.InDoubt;
using Treaty.AspNetCore.Tests.Support;

namespace Treaty.AspNetCore.Tests.PreparedTransactions;

/// <summary>
/// <see cref="PreparedTransactionEndpointRouteBuilderExtensions.MapTreatyPreparedTransactionBranch"/>
/// on real PostgreSQL (the test cluster runs with <c>max_prepared_transactions=100</c>): the
/// participant's <c>/native</c> prepare reserves one unit of a stock row inside a prepared
/// transaction.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class PreparedTransactionBranchTests(PostgresFixture postgres) : IAsyncLifetime
{
    private static readonly TimeSpan After = TimeSpan.FromSeconds(30);
    private readonly ManualTimeProvider _time = new();
    private TestDatabase _database = null!;
    private FakeCoordinator _coordinator = null!;
    private InDoubtParticipant _participant = null!;

    public async Task InitializeAsync()
    {
        _database = await TestDatabase.PostgreSqlAsync(postgres, "prepared");
        _coordinator = await FakeCoordinator.StartAsync();
        _participant = await StartParticipantAsync();
    }

    public async Task DisposeAsync()
    {
        if (_participant is not null)
        {
            await _participant.DisposeAsync();
        }

        if (_coordinator is not null)
        {
            await _coordinator.DisposeAsync();
        }

        if (_database is not null)
        {
            // A failed test must not leave prepared transactions behind: they count against the
            // cluster's max_prepared_transactions for every later test.
            foreach (var name in await PreparedTransactionsAsync())
            {
                await ExecuteAsync("ROLLBACK PREPARED " + PreparedTransactionRules.Literal(name));
            }

            await _database.DisposeAsync();
        }
    }

    private Task<InDoubtParticipant> StartParticipantAsync() =>
        InDoubtParticipant.StartAsync(new ParticipantSetup(_database.Database, _time) { Coordinator = _coordinator.BaseAddress, After = After, PreparedTransactions = true });

    private static string NewGid() => "g-" + Guid.NewGuid().ToString("N");

    private async Task<(string Gid, string Sku)> NewBranchAsync()
    {
        var gid = NewGid();
        var sku = "sku-" + gid;
        await InDoubtParticipant.SeedAsync(_database.Database, sku, 10);
        return (gid, sku);
    }

    private Task<BranchAnswer> CallAsync(string gid, string op, string sku, string extra = "") =>
        _participant.CallAsync(gid, op, $$"""{"sku":"{{sku}}"{{extra}}}""", path: "native");

    private string NameOf(string gid) =>
        PreparedTransactionRules.TransactionName(new NpgsqlConnectionStringBuilder(ConnectionString).Database!, gid, "b1");

    private string ConnectionString => _database.ConnectionString!;

    [Fact]
    public async Task Prepare_HoldsTheRowLocksInAPreparedTransaction_AnotherUpdateWaits_UntilCommitPrepared()
    {
        var (gid, sku) = await NewBranchAsync();

        var prepare = await CallAsync(gid, "prepare", sku);

        prepare.Status.ShouldBe(200);
        prepare.Outcome.ShouldBe("executed");
        (await PreparedTransactionsAsync()).ShouldBe([NameOf(gid)]);
        (await _participant.PreparedAsync(gid)).ShouldNotBeNull().Transaction.ShouldBe(NameOf(gid));
        (await _participant.AvailableAsync(sku)).ShouldBe(10); // the prepared work is invisible until committed
        (await TryUpdateAsync(sku)).ShouldBeFalse(); // ... and holds its row lock: another writer waits

        var commit = await CallAsync(gid, "commit", sku);

        commit.Status.ShouldBe(200);
        commit.Outcome.ShouldBe("executed");
        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.AvailableAsync(sku)).ShouldBe(9);
        (await _participant.HoldAsync(gid)).ShouldBe("held");
        (await _participant.PreparedAsync(gid)).ShouldBeNull();
        (await TryUpdateAsync(sku)).ShouldBeTrue();
        _participant.Runs(gid, "prepare").ShouldBe(1);
        _participant.Runs(gid, "commit").ShouldBe(0); // commit is COMMIT PREPARED; there is nothing to write
    }

    [Fact]
    public async Task Rollback_RollsThePreparedTransactionBack_AndDuplicatesOfEitherReplay()
    {
        var (gid, sku) = await NewBranchAsync();
        var prepare = await CallAsync(gid, "prepare", sku);

        var rollback = await CallAsync(gid, "rollback", sku);
        var duplicateRollback = await CallAsync(gid, "rollback", sku);
        var duplicatePrepare = await CallAsync(gid, "prepare", sku);

        rollback.Status.ShouldBe(200);
        rollback.Outcome.ShouldBe("executed");
        duplicateRollback.ShouldBe(rollback with { Outcome = "replayed" });
        duplicatePrepare.ShouldBe(prepare with { Outcome = "replayed" });
        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.AvailableAsync(sku)).ShouldBe(10);
        (await _participant.HoldAsync(gid)).ShouldBeNull();
        (await _participant.PreparedAsync(gid)).ShouldBeNull();
        (await TryUpdateAsync(sku)).ShouldBeTrue();
    }

    [Fact]
    public async Task DuplicatePrepare_WhilePrepared_ReplaysTheFirstAnswer_AndPreparesOnce()
    {
        var (gid, sku) = await NewBranchAsync();

        var first = await CallAsync(gid, "prepare", sku);
        var second = await CallAsync(gid, "prepare", sku);

        second.ShouldBe(first with { Outcome = "replayed" });
        _participant.Runs(gid, "prepare").ShouldBe(1);
        (await PreparedTransactionsAsync()).ShouldBe([NameOf(gid)]);
        (await CallAsync(gid, "rollback", sku)).Status.ShouldBe(200);
    }

    [Fact]
    public async Task ConcurrentDuplicatePrepares_PrepareOnce_AllGetTheSameAnswer()
    {
        var (gid, sku) = await NewBranchAsync();
        _participant.Delay("prepare", TimeSpan.FromMilliseconds(50));

        var answers = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => CallAsync(gid, "prepare", sku)));

        answers.Select(a => (a.Status, a.Body)).Distinct().Count().ShouldBe(1);
        answers.Count(a => a.Outcome == "executed").ShouldBe(1);
        _participant.Runs(gid, "prepare").ShouldBe(1);
        (await PreparedTransactionsAsync()).ShouldBe([NameOf(gid)]);
        (await CallAsync(gid, "commit", sku)).Status.ShouldBe(200);
        (await _participant.AvailableAsync(sku)).ShouldBe(9);
    }

    [Fact]
    public async Task RollbackBeforePrepare_IsANullRollback_AndTheLatePrepareIsRefused_NothingPrepared()
    {
        var (gid, sku) = await NewBranchAsync();

        var rollback = await CallAsync(gid, "rollback", sku);
        var late = await CallAsync(gid, "prepare", sku);
        var lateAgain = await CallAsync(gid, "prepare", sku);

        rollback.Status.ShouldBe(200);
        rollback.Outcome.ShouldBe("null-compensation");
        late.Status.ShouldBe(409);
        late.Outcome.ShouldBe("skipped-hanging");
        late.Body.ShouldContain(TreatyBarrier.AlreadyCompensatedType);
        lateAgain.ShouldBe(late with { Outcome = "replayed" });
        _participant.Runs(gid, "prepare").ShouldBe(0);
        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.AvailableAsync(sku)).ShouldBe(10);
    }

    [Fact]
    public async Task RefusedPrepare_IsANoVote_PreparesNothing_AndItsRollbackIsNull()
    {
        var (gid, sku) = await NewBranchAsync();

        var refused = await CallAsync(gid, "prepare", sku, ""","fail":true""");
        var duplicate = await CallAsync(gid, "prepare", sku, ""","fail":true""");
        var rollback = await CallAsync(gid, "rollback", sku);

        refused.Status.ShouldBe(409);
        duplicate.ShouldBe(refused with { Outcome = "replayed" });
        rollback.Outcome.ShouldBe("null-compensation");
        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.PreparedAsync(gid)).ShouldBeNull();
        (await _participant.AvailableAsync(sku)).ShouldBe(10);
    }

    [Fact]
    public async Task DuplicateCommit_IsAReplay_AndARollbackAfterTheCommit_IsAConflict()
    {
        var (gid, sku) = await NewBranchAsync();
        await CallAsync(gid, "prepare", sku);
        var commit = await CallAsync(gid, "commit", sku);

        var duplicate = await CallAsync(gid, "commit", sku);
        var rollback = await CallAsync(gid, "rollback", sku);

        duplicate.ShouldBe(commit with { Outcome = "replayed" });
        rollback.Status.ShouldBe(409);
        rollback.Outcome.ShouldBe("conflict");
        (await _participant.AvailableAsync(sku)).ShouldBe(9);
    }

    [Fact]
    public async Task Commit_AfterACrashBetweenCommitPreparedAndItsRecord_IsFinished_NotRepeated()
    {
        var (gid, sku) = await NewBranchAsync();
        await CallAsync(gid, "prepare", sku);
        await ExecuteAsync("COMMIT PREPARED " + PreparedTransactionRules.Literal(NameOf(gid))); // the process died right after this

        var commit = await CallAsync(gid, "commit", sku);
        var rollback = await CallAsync(gid, "rollback", sku);

        commit.Status.ShouldBe(200);
        commit.Outcome.ShouldBe("executed");
        (await _participant.PreparedAsync(gid)).ShouldBeNull();
        rollback.Outcome.ShouldBe("conflict");
        (await _participant.AvailableAsync(sku)).ShouldBe(9);
    }

    [Fact]
    public async Task Prepare_ThatPostgreSqlCannotPrepare_Answers500_AndLeavesNothingHeld()
    {
        var (gid, sku) = await NewBranchAsync();

        var failed = await CallAsync(gid, "prepare", sku, ""","tempTable":true""");
        var retry = await CallAsync(gid, "prepare", sku);

        failed.Status.ShouldBe(500); // unknown to the coordinator: it retries
        retry.Status.ShouldBe(200);
        retry.Outcome.ShouldBe("executed");
        (await PreparedTransactionsAsync()).ShouldBe([NameOf(gid)]);
        (await CallAsync(gid, "rollback", sku)).Status.ShouldBe(200);
    }

    [Fact]
    public async Task PreparedRowWithoutItsTransaction_LeftByACrashBeforePrepare_HoldsNothing_AndIsCleanedByTheRollback()
    {
        var (gid, sku) = await NewBranchAsync();
        await ExecuteAsync(
            "INSERT INTO treaty_prepared (gid, branch, stage, endpoint, payload, since, next_check_at, checks, xact, answer) VALUES (@gid, 'b1', 'prepared', 'native', '{}', 0, 0, 0, @xact, '{}')",
            ("gid", gid), ("xact", NameOf(gid)));

        var rollback = await CallAsync(gid, "rollback", sku);

        rollback.Outcome.ShouldBe("null-compensation");
        (await _participant.PreparedAsync(gid)).ShouldBeNull();
        (await TryUpdateAsync(sku)).ShouldBeTrue();
    }

    [Fact]
    public async Task OtherOperations_AreRefused400()
    {
        var (gid, sku) = await NewBranchAsync();

        var answer = await CallAsync(gid, "canCommit", sku);

        answer.Status.ShouldBe(400);
        answer.Body.ShouldContain("op");
        _participant.Runs(gid, "canCommit").ShouldBe(0);
    }

    [Fact]
    public async Task PreparedTransaction_SurvivesAParticipantRestart_AndTheResolverRollsItBack()
    {
        var (gid, sku) = await NewBranchAsync();
        await CallAsync(gid, "prepare", sku);

        await _participant.DisposeAsync();
        _participant = null!;
        _participant = await StartParticipantAsync();

        (await PreparedTransactionsAsync()).ShouldBe([NameOf(gid)]);
        (await TryUpdateAsync(sku)).ShouldBeFalse(); // still locked, by the database, with no process holding it
        (await _participant.PreparedAsync(gid)).ShouldNotBeNull();

        _time.Advance(After);
        var resolution = (await _participant.ResolveAsync()).ShouldHaveSingleItem(); // the coordinator has no record: presumed abort

        resolution.Answer.ShouldBe(CoordinatorAnswer.UnknownTransaction);
        resolution.Result.ShouldBe(InDoubtResult.Resolved);
        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.PreparedAsync(gid)).ShouldBeNull();
        (await TryUpdateAsync(sku)).ShouldBeTrue();
        (await _participant.AvailableAsync(sku)).ShouldBe(0); // 10, then the update above
    }

    [Fact]
    public async Task Resolver_DecisionCommit_CommitsPrepared_AndTheCoordinatorsLaterCommitIsAReplay()
    {
        var (gid, sku) = await NewBranchAsync();
        await CallAsync(gid, "prepare", sku);
        _coordinator.Says(gid, "running", "commit");

        _time.Advance(After);
        var resolution = (await _participant.ResolveAsync()).ShouldHaveSingleItem();
        var late = await CallAsync(gid, "commit", sku);

        resolution.Action.ShouldBe(InDoubtAction.Commit);
        resolution.Result.ShouldBe(InDoubtResult.Resolved);
        late.Outcome.ShouldBe("replayed");
        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.AvailableAsync(sku)).ShouldBe(9);
    }

    [Fact]
    public async Task Resolver_CoordinatorUnreachable_TheTwoPhaseBranchStaysPrepared()
    {
        await _participant.DisposeAsync();
        _participant = null!;
        _participant = await InDoubtParticipant.StartAsync(new ParticipantSetup(_database.Database, _time) { Coordinator = FakeCoordinator.Unreachable(), After = After, PreparedTransactions = true });
        var (gid, sku) = await NewBranchAsync();
        await CallAsync(gid, "prepare", sku);

        _time.Advance(After);
        (await _participant.ResolveAsync()).ShouldHaveSingleItem().Action.ShouldBe(InDoubtAction.Wait);

        (await PreparedTransactionsAsync()).ShouldBe([NameOf(gid)]);
        (await CallAsync(gid, "rollback", sku)).Outcome.ShouldBe("executed");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task TwoPhase_WithTheRealCoordinator_APreparedTransactionBranchCommitsOrRollsBackWithTheOthers(bool allYes)
    {
        await using var coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-kit-native");
        var gid = NewGid();
        var native = "sku-native-" + gid;
        var rows = "sku-rows-" + gid;
        await InDoubtParticipant.SeedAsync(_database.Database, native, 10);
        await InDoubtParticipant.SeedAsync(_database.Database, rows, 10);

        var view = await Transactions.SubmitAsync(coordinator, gid, "2pc", "10s", $$$"""{"skus":{"native":"{{{native}}}","rows":"{{{rows}}}"}}""",
            Transactions.TwoPhase("native", _participant.Url("native"), Transactions.Quick(maxAttempts: 3)),
            Transactions.TwoPhase("rows", _participant.Url(allYes ? "branch" : "refuse"), Transactions.Quick(maxAttempts: 3)));

        if (allYes)
        {
            view.Status.ShouldBe("committed");
            (await _participant.AvailableAsync(native)).ShouldBe(9);
            (await _participant.AvailableAsync(rows)).ShouldBe(9);
        }
        else
        {
            view.Status.ShouldBe("aborted");
            // The rollback is a best-effort notification: wait until it ran and its answer was
            // recorded (the participant notes the answer after ROLLBACK PREPARED completed).
            await Transactions.WaitUntilAsync(async () =>
                (await PreparedTransactionsAsync()).Count == 0 && _participant.Answers(gid, "rollback").Contains("executed"));
            (await _participant.AvailableAsync(native)).ShouldBe(10);
        }

        (await PreparedTransactionsAsync()).ShouldBeEmpty();
        (await _participant.PreparedAsync(gid, "native")).ShouldBeNull();
        (await TryUpdateAsync(native)).ShouldBeTrue();
    }

    [Fact]
    public void MapTreatyPreparedTransactionBranch_OnSqlite_FailsAtStartup()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Services.AddSingleton<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(Path.GetTempPath(), "unused.db")));
        builder.Services.AddTreatyBarrier();
        using var app = builder.Build();

        Should.Throw<InvalidOperationException>(() => app.MapTreatyPreparedTransactionBranch("/x", (context, _) => Task.FromResult(context.Ok())))
            .Message.ShouldContain("PostgreSqlParticipantDatabase");
    }

    /// <summary>The prepared transactions of this test's database.</summary>
    private async Task<IReadOnlyList<string>> PreparedTransactionsAsync()
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        await using var select = new NpgsqlCommand("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid", connection);
        await using var reader = await select.ExecuteReaderAsync();
        var names = new List<string>();
        while (await reader.ReadAsync())
        {
            names.Add(reader.GetString(0));
        }

        return names;
    }

    /// <summary>Tries to update the stock row from another transaction, waiting at most 300 ms for its lock.</summary>
    private async Task<bool> TryUpdateAsync(string sku)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        await using (var timeout = new NpgsqlCommand("SET LOCAL lock_timeout = '300ms'", connection, transaction))
        {
            await timeout.ExecuteNonQueryAsync();
        }

        try
        {
            await using var update = new NpgsqlCommand("UPDATE stock SET available = 0 WHERE sku = @sku", connection, transaction);
            update.Parameters.AddWithValue("sku", sku);
            await update.ExecuteNonQueryAsync();
            await transaction.CommitAsync();
            return true;
        }
        catch (PostgresException exception) when (exception.SqlState == PostgresErrorCodes.LockNotAvailable)
        {
            return false;
        }
    }

    private async Task ExecuteAsync(string sql, params (string Name, object Value)[] parameters)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        await command.ExecuteNonQueryAsync();
    }
}
