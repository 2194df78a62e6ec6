using System.Data;
using Treaty.Client.Tests.Support;

namespace Treaty.Client.Tests;

/// <summary>
/// The two-phase message from the sender's side, against a real coordinator, a real sender service
/// (queryPrepared through <see cref="TreatyMessages"/>) and a real database. Every test runs on SQLite
/// and on PostgreSQL (the subclasses below).
/// </summary>
public abstract class MessageSenderTests : IAsyncLifetime
{
    /// <summary>How long a message waits for its submit before the coordinator asks queryPrepared,
    /// where the test wants the question asked soon.</summary>
    protected static readonly TimeSpan AskSoon = TimeSpan.FromMilliseconds(300);

    /// <summary>Where the test commits by hand after registering: long enough that a loaded machine
    /// still commits before queryPrepared comes, short enough to keep the test quick.</summary>
    protected static readonly TimeSpan AskAfterCommit = TimeSpan.FromSeconds(2);

    protected static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private readonly TreatyFixture _treaty;

    protected MessageSenderTests(TreatyFixture treaty) => _treaty = treaty;

    protected TreatyClient Client => _treaty.Client;

    protected TinyParticipant Participant => _treaty.Participant;

    protected SenderDatabase Database { get; private set; } = null!;

    protected SenderApp Sender { get; private set; } = null!;

    /// <summary>The isolation level that lets the local transaction stay open without holding a
    /// lock queryPrepared needs (SQLite: a deferred BEGIN).</summary>
    protected virtual IsolationLevel OpenWithoutLocks => IsolationLevel.Unspecified;

    public async Task InitializeAsync()
    {
        Database = await CreateDatabaseAsync();
        Sender = await SenderApp.StartAsync(Database);
    }

    public async Task DisposeAsync()
    {
        if (Sender is not null)
        {
            await Sender.DisposeAsync();
        }

        if (Database is not null)
        {
            await Database.DisposeAsync();
        }
    }

    protected abstract Task<SenderDatabase> CreateDatabaseAsync();

    /// <summary>A message announcing <paramref name="orderId"/> to the sender's receiver and the participant.</summary>
    protected MessageBuilder OrderPlaced(string gid, string orderId, TimeSpan askAfter) => Client.Message(gid)
        .WithQueryPrepared(Sender.QueryPrepared)
        .WithPayload(System.Text.Json.JsonSerializer.SerializeToElement(new Dictionary<string, string> { ["orderId"] = orderId }))
        .Branch("receiver", Sender.Receive)
        .Branch("billing", Participant.Ok)
        .WithTimeout(askAfter)
        .WithRetry(30, TimeSpan.FromMilliseconds(50), TimeSpan.FromMilliseconds(200));

    private static string NewGid(string prefix) => TreatyFixture.NewGid(prefix);

    private int Deliveries(string gid) => Sender.DeliveriesOf(gid).Count + Participant.CallsOf(gid, "billing", "action");

    [Fact]
    public async Task Execute_LocalWorkCommits_DeliversOnceAfterTheLocalCommit()
    {
        var gid = NewGid("msg-exec");
        var orderId = NewGid("order");
        await using var connection = Database.Connect();
        string? statusDuringLocalWork = null;

        var sent = await OrderPlaced(gid, orderId, TimeSpan.FromMinutes(1)).ExecuteAsync(connection, async (tx, ct) =>
        {
            statusDuringLocalWork = (await Client.GetAsync(gid, ct))?.Status;
            await SenderDatabase.InsertOrderAsync(tx, orderId, ct);
        }, wait: TimeSpan.FromSeconds(10));

        statusDuringLocalWork.ShouldBe("prepared"); // registered before the local transaction, nothing delivered yet
        sent.Status.ShouldBe(MessageSendStatus.Submitted);
        sent.SubmitError.ShouldBeNull();
        sent.Gid.ShouldBe(gid);
        sent.View.IsCommitted().ShouldBeTrue(sent.View.Status);
        sent.View.Decision.ShouldBe("commit");
        (await Database.HasOrderAsync(orderId)).ShouldBeTrue();
        (await Database.MarkOfAsync(gid)).ShouldBe("committed");
        var delivery = Sender.DeliveriesOf(gid).ShouldHaveSingleItem();
        delivery.OrderVisible.ShouldBeTrue("the message arrived before the sender's commit was visible");
        Participant.CallsOf(gid, "billing", "action").ShouldBe(1);
        Sender.AskedAbout(gid).ShouldBe(0); // the submit came first: no question needed
        connection.State.ShouldBe(ConnectionState.Closed); // opened for the call, closed again
    }

    [Fact]
    public async Task Execute_LocalWorkThrows_RollsBackRethrowsAndQueryPreparedAbortsTheMessage()
    {
        var gid = NewGid("msg-throw");
        var orderId = NewGid("order");
        await using var connection = Database.Connect();
        var failure = new InvalidOperationException("out of stock");

        var thrown = await Should.ThrowAsync<InvalidOperationException>(() => OrderPlaced(gid, orderId, AskSoon).ExecuteAsync(connection, async (tx, ct) =>
        {
            await SenderDatabase.InsertOrderAsync(tx, orderId, ct);
            throw failure;
        }));

        thrown.ShouldBeSameAs(failure);
        (await Database.HasOrderAsync(orderId)).ShouldBeFalse();
        var view = await Client.WaitAsync(gid, Patience);
        view.IsAborted().ShouldBeTrue(view.Status);
        view.Decision.ShouldBe("abort");
        view.Ops.ShouldNotBeNull()["queryPrepared"].LastStatusCode.ShouldBe(409);
        Sender.AnswersAbout(gid).ShouldBe([409]);
        (await Database.MarkOfAsync(gid)).ShouldBe("rolled-back");
        Deliveries(gid).ShouldBe(0);
    }

    [Fact]
    public async Task Message_SenderCrashesAfterCommitBeforeSubmit_QueryPreparedDelivers()
    {
        var gid = NewGid("msg-crash");
        var orderId = NewGid("order");

        // The steps of ExecuteAsync by hand, stopping where a crash would: after the local commit.
        var registered = await OrderPlaced(gid, orderId, AskAfterCommit).SubmitAsync();
        registered.Status.ShouldBe("prepared");
        await using (var connection = Database.Connect())
        {
            await connection.OpenAsync();
            await TreatyMessages.EnsureTableAsync(connection);
            await using var tx = await connection.BeginTransactionAsync();
            await SenderDatabase.InsertOrderAsync(tx, orderId);
            await TreatyMessages.MarkCommittedAsync(tx, gid);
            await tx.CommitAsync();
        }

        // ... no submit.
        var view = await Client.WaitAsync(gid, Patience);

        view.IsCommitted().ShouldBeTrue(view.Status);
        view.Ops.ShouldNotBeNull()["queryPrepared"].Status.ShouldBe("succeeded");
        Sender.AnswersAbout(gid).ShouldBe([200]);
        Sender.DeliveriesOf(gid).ShouldHaveSingleItem().OrderVisible.ShouldBeTrue();
        Participant.CallsOf(gid, "billing", "action").ShouldBe(1);
    }

    [Fact]
    public async Task Message_QueryPreparedRacesAnOpenLocalTransaction_LocalCommitFailsAndTheMessageIsAborted()
    {
        var gid = NewGid("msg-race");
        var orderId = NewGid("order");
        await using var connection = Database.Connect();
        var inside = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // The sender is slow: its local transaction is still open when the coordinator asks.
        var execute = OrderPlaced(gid, orderId, AskSoon).ExecuteAsync(connection, async (tx, ct) =>
        {
            inside.SetResult();
            await release.Task.WaitAsync(ct);
            await SenderDatabase.InsertOrderAsync(tx, orderId, ct);
        }, isolationLevel: OpenWithoutLocks);
        await inside.Task.WaitAsync(Patience);
        var aborted = await Client.WaitAsync(gid, Patience);
        aborted.IsAborted().ShouldBeTrue(aborted.Status);
        execute.IsCompleted.ShouldBeFalse(); // the answer "rolled back" was given while the transaction was open

        release.SetResult();
        var ex = await Should.ThrowAsync<InvalidOperationException>(() => execute);

        ex.Message.ShouldContain("rolled back");
        (await Database.HasOrderAsync(orderId)).ShouldBeFalse(); // the fenced local transaction did not commit
        (await Database.MarkOfAsync(gid)).ShouldBe("rolled-back");
        Sender.AnswersAbout(gid).ShouldBe([409]);
        await Task.Delay(TimeSpan.FromMilliseconds(500)); // a delivery, if one were coming, has had its chance
        Deliveries(gid).ShouldBe(0);
        (await Client.GetAsync(gid)).ShouldNotBeNull().IsAborted().ShouldBeTrue();
    }

    [Fact]
    public async Task Message_QueryPreparedAnswers503_StaysPreparedThenDeliversOnceWhenTheSenderAnswers2xx()
    {
        var gid = NewGid("msg-503");
        var orderId = NewGid("order");
        Sender.Unavailable = true;
        await OrderPlaced(gid, orderId, AskAfterCommit).SubmitAsync();
        await CommitByHandAsync(gid, orderId);

        await Eventually(() => Sender.AnswersAbout(gid).Count >= 3);
        var waiting = (await Client.GetAsync(gid)).ShouldNotBeNull();
        waiting.Status.ShouldBe("prepared"); // unknown is not "rolled back": it keeps asking
        waiting.Ops.ShouldNotBeNull()["queryPrepared"].LastStatusCode.ShouldBe(503);
        Deliveries(gid).ShouldBe(0);

        Sender.Unavailable = false;
        var view = await Client.WaitAsync(gid, Patience);

        view.IsCommitted().ShouldBeTrue(view.Status);
        var answers = Sender.AnswersAbout(gid);
        answers[^1].ShouldBe(200);
        answers.Take(answers.Count - 1).ShouldAllBe(status => status == 503);
        Sender.DeliveriesOf(gid).Count.ShouldBe(1);
        Participant.CallsOf(gid, "billing", "action").ShouldBe(1);
    }

    [Fact]
    public async Task Execute_SubmitFailsAfterTheCommit_ReturnsSubmitPendingAndQueryPreparedDelivers()
    {
        var gid = NewGid("msg-pending");
        var orderId = NewGid("order");
        using var http = new HttpClient(new UnreachableSubmitHandler(cancel: null)) { BaseAddress = Client.BaseAddress };
        using var client = new TreatyClient(http);
        await using var connection = Database.Connect();

        var sent = await client.Message(gid)
            .WithQueryPrepared(Sender.QueryPrepared)
            .WithPayload(System.Text.Json.JsonSerializer.SerializeToElement(new Dictionary<string, string> { ["orderId"] = orderId }))
            .Branch("receiver", Sender.Receive)
            .WithTimeout(AskAfterCommit)
            .ExecuteAsync(connection, (tx, ct) => SenderDatabase.InsertOrderAsync(tx, orderId, ct));

        sent.Status.ShouldBe(MessageSendStatus.SubmitPending);
        sent.SubmitError.ShouldBeOfType<HttpRequestException>();
        sent.View.Status.ShouldBe("prepared");
        (await Database.HasOrderAsync(orderId)).ShouldBeTrue(); // the commit stands
        var view = await Client.WaitAsync(gid, Patience);
        view.IsCommitted().ShouldBeTrue(view.Status);
        Sender.AnswersAbout(gid).ShouldBe([200]);
        Sender.DeliveriesOf(gid).ShouldHaveSingleItem().OrderVisible.ShouldBeTrue();
    }

    [Fact]
    public async Task Execute_CancelledDuringTheSubmitAfterTheCommit_ReturnsSubmitPendingAndQueryPreparedDelivers()
    {
        var gid = NewGid("msg-cancel-late");
        var orderId = NewGid("order");
        using var cancel = new CancellationTokenSource();
        using var http = new HttpClient(new UnreachableSubmitHandler(cancel)) { BaseAddress = Client.BaseAddress };
        using var client = new TreatyClient(http);
        await using var connection = Database.Connect();

        var sent = await client.Message(gid)
            .WithQueryPrepared(Sender.QueryPrepared)
            .WithPayload(System.Text.Json.JsonSerializer.SerializeToElement(new Dictionary<string, string> { ["orderId"] = orderId }))
            .Branch("receiver", Sender.Receive)
            .WithTimeout(AskAfterCommit)
            .ExecuteAsync(connection, (tx, ct) => SenderDatabase.InsertOrderAsync(tx, orderId, ct), cancellationToken: cancel.Token);

        // Throwing OperationCanceledException here would say "not done" about a committed change.
        sent.Status.ShouldBe(MessageSendStatus.SubmitPending);
        sent.SubmitError.ShouldBeAssignableTo<OperationCanceledException>();
        (await Database.HasOrderAsync(orderId)).ShouldBeTrue();
        (await Client.WaitAsync(gid, Patience)).IsCommitted().ShouldBeTrue();
        Sender.DeliveriesOf(gid).ShouldHaveSingleItem().OrderVisible.ShouldBeTrue();
    }

    [Fact]
    public async Task Execute_CancelledBeforeTheCommit_RollsBackAndThrows()
    {
        var gid = NewGid("msg-cancel-early");
        var orderId = NewGid("order");
        using var cancel = new CancellationTokenSource();
        await using var connection = Database.Connect();

        await Should.ThrowAsync<OperationCanceledException>(() => OrderPlaced(gid, orderId, AskSoon).ExecuteAsync(connection, async (tx, ct) =>
        {
            await SenderDatabase.InsertOrderAsync(tx, orderId, ct);
            await cancel.CancelAsync();
        }, cancellationToken: cancel.Token));

        (await Database.HasOrderAsync(orderId)).ShouldBeFalse();
        (await Client.WaitAsync(gid, Patience)).IsAborted().ShouldBeTrue();
        Deliveries(gid).ShouldBe(0);
    }

    [Fact]
    public async Task Execute_OperatorAbortsWhileTheLocalTransactionRuns_TheOutcomeFollowsTheSendersDatabase()
    {
        var gid = NewGid("msg-operator");
        var orderId = NewGid("order");
        await using var connection = Database.Connect();

        // The operator's abort makes the coordinator ask queryPrepared at once. Whichever comes
        // first — the fence or the local commit — the message ends as the sender's database says.
        MessageSendResult? sent = null;
        Exception? failed = null;
        try
        {
            sent = await OrderPlaced(gid, orderId, TimeSpan.FromMinutes(1)).ExecuteAsync(connection, async (tx, ct) =>
            {
                await SenderDatabase.InsertOrderAsync(tx, orderId, ct);
                await Client.AbortAsync(gid, "operator", ct);
            });
        }
        catch (Exception ex) when (ex is not ShouldAssertException)
        {
            failed = ex;
        }

        var committedLocally = await Database.HasOrderAsync(orderId);
        committedLocally.ShouldBe(failed is null, failed?.ToString());
        var view = await Eventually(async () => await Client.GetAsync(gid), v => v is not null && v.IsTerminal());
        if (committedLocally)
        {
            sent.ShouldNotBeNull().Status.ShouldBe(MessageSendStatus.Submitted);
            view!.IsCommitted().ShouldBeTrue();
            Deliveries(gid).ShouldBe(2);
        }
        else
        {
            view!.IsAborted().ShouldBeTrue();
            Deliveries(gid).ShouldBe(0);
        }
    }

    [Fact]
    public async Task Execute_SameGidAgain_RefusesWithoutRunningTheLocalWorkTwice()
    {
        var gid = NewGid("msg-twice");
        var orderId = NewGid("order");
        var runs = 0;
        await using var connection = Database.Connect();
        Task Work(System.Data.Common.DbTransaction tx, CancellationToken ct)
        {
            runs++;
            return SenderDatabase.InsertOrderAsync(tx, orderId + "-" + runs, ct);
        }

        await OrderPlaced(gid, orderId, TimeSpan.FromMinutes(1)).ExecuteAsync(connection, Work, wait: TimeSpan.FromSeconds(10));
        var ex = await Should.ThrowAsync<InvalidOperationException>(() => OrderPlaced(gid, orderId, TimeSpan.FromMinutes(1)).ExecuteAsync(connection, Work));

        ex.Message.ShouldContain("not prepared");
        runs.ShouldBe(1);
        (await Database.HasOrderAsync(orderId + "-2")).ShouldBeFalse();
        Deliveries(gid).ShouldBe(2); // once per branch, once only
    }

    [Fact]
    public async Task MarkCommitted_AfterAnEarlierCommitOfTheSameGid_FailsSoTheSecondLocalTransactionRollsBack()
    {
        var gid = NewGid("mark-twice");
        await CommitByHandAsync(gid, NewGid("order"));
        await using var connection = Database.Connect();
        await connection.OpenAsync();
        await using var tx = await connection.BeginTransactionAsync();

        var ex = await Should.ThrowAsync<InvalidOperationException>(() => TreatyMessages.MarkCommittedAsync(tx, gid));

        ex.Message.ShouldContain("already marked committed");
    }

    [Fact]
    public async Task QueryPrepared_UnknownGid_AnswersRolledBackAndFencesALaterLocalCommit()
    {
        var gid = NewGid("never-sent");
        await using (var asker = Database.Connect())
        {
            (await TreatyMessages.QueryPreparedAsync(asker, gid)).ShouldBe(PreparedOutcome.RolledBack);
            asker.State.ShouldBe(ConnectionState.Closed);
        }

        var ex = await Should.ThrowAsync<InvalidOperationException>(() => CommitByHandAsync(gid, NewGid("order")));

        ex.Message.ShouldContain("rolled back");
        await using var again = Database.Connect();
        (await TreatyMessages.QueryPreparedAsync(again, gid)).ShouldBe(PreparedOutcome.RolledBack); // and stays so
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task QueryPrepared_WhileALocalTransactionHoldsItsCommittedMarker_WaitsAndAnswersItsOutcome(bool commit)
    {
        var gid = NewGid("mark-held");
        var orderId = NewGid("order");
        await using var connection = Database.Connect();
        await connection.OpenAsync();
        await TreatyMessages.EnsureTableAsync(connection);
        await using var tx = await connection.BeginTransactionAsync();
        await SenderDatabase.InsertOrderAsync(tx, orderId);
        await TreatyMessages.MarkCommittedAsync(tx, gid);

        await using var asker = Database.Connect();
        // On a thread of its own: Microsoft.Data.Sqlite's async methods block while they wait for the lock.
        var answer = Task.Run(() => TreatyMessages.QueryPreparedAsync(asker, gid));
        await Task.Delay(TimeSpan.FromMilliseconds(300));
        answer.IsCompleted.ShouldBeFalse("queryPrepared answered before the local transaction ended");
        if (commit)
        {
            await tx.CommitAsync();
        }
        else
        {
            await tx.RollbackAsync();
        }

        (await answer.WaitAsync(Patience)).ShouldBe(commit ? PreparedOutcome.Committed : PreparedOutcome.RolledBack);
        (await Database.MarkOfAsync(gid)).ShouldBe(commit ? "committed" : "rolled-back");
    }

    /// <summary>A local transaction with an order and the message's marker, committed without submitting.</summary>
    protected async Task CommitByHandAsync(string gid, string orderId)
    {
        await using var connection = Database.Connect();
        await connection.OpenAsync();
        await TreatyMessages.EnsureTableAsync(connection);
        await using var tx = await connection.BeginTransactionAsync();
        await SenderDatabase.InsertOrderAsync(tx, orderId);
        await TreatyMessages.MarkCommittedAsync(tx, gid);
        await tx.CommitAsync();
    }

    protected static async Task<T> Eventually<T>(Func<Task<T>> probe, Func<T, bool> done)
    {
        var started = TimeProvider.System.GetTimestamp();
        while (true)
        {
            var value = await probe();
            if (done(value))
            {
                return value;
            }

            TimeProvider.System.GetElapsedTime(started).ShouldBeLessThan(Patience, "the condition never held");
            await Task.Delay(TimeSpan.FromMilliseconds(20));
        }
    }

    protected static async Task Eventually(Func<bool> condition)
    {
        var started = TimeProvider.System.GetTimestamp();
        while (!condition())
        {
            TimeProvider.System.GetElapsedTime(started).ShouldBeLessThan(Patience, "the condition never held");
            await Task.Delay(TimeSpan.FromMilliseconds(20));
        }
    }

    /// <summary>
    /// Registration and reads get through; the submit does not: the coordinator is unreachable for it,
    /// or, given <paramref name="cancel"/>, the caller cancels while it is on its way.
    /// </summary>
    private sealed class UnreachableSubmitHandler(CancellationTokenSource? cancel) : DelegatingHandler(new SocketsHttpHandler())
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            if (!request.RequestUri!.AbsolutePath.EndsWith("/submit", StringComparison.Ordinal))
            {
                return await base.SendAsync(request, cancellationToken);
            }

            if (cancel is null)
            {
                throw new HttpRequestException("Connection refused (the test's coordinator is unreachable for /submit)");
            }

            await cancel.CancelAsync();
            cancellationToken.ThrowIfCancellationRequested();
            throw new InvalidOperationException("the caller's token did not reach the submit");
        }
    }
}

/// <summary>The sender's database is a SQLite file (WAL).</summary>
public sealed class SqliteMessageSenderTests(TreatyFixture treaty) : MessageSenderTests(treaty), IClassFixture<TreatyFixture>
{
    /// <summary>Microsoft.Data.Sqlite begins <c>BEGIN IMMEDIATE</c> by default, taking the write lock at
    /// once; ReadUncommitted gives a deferred <c>BEGIN</c>.</summary>
    protected override IsolationLevel OpenWithoutLocks => IsolationLevel.ReadUncommitted;

    protected override async Task<SenderDatabase> CreateDatabaseAsync() => await SqliteSenderDatabase.CreateAsync();

    [Fact]
    public async Task Sqlite_QueryPreparedWhileAnImmediateLocalTransactionRuns_WaitsForTheWriteLockAndDeliversAfterTheCommit()
    {
        var gid = TreatyFixture.NewGid("msg-sqlite-lock");
        var orderId = TreatyFixture.NewGid("order");
        await using var connection = Database.Connect();
        var inside = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // The default BEGIN IMMEDIATE holds SQLite's write lock for the whole local transaction.
        var execute = OrderPlaced(gid, orderId, AskSoon).ExecuteAsync(connection, async (tx, ct) =>
        {
            await SenderDatabase.InsertOrderAsync(tx, orderId, ct);
            inside.SetResult();
            await release.Task.WaitAsync(ct);
        }, wait: TimeSpan.FromSeconds(10));
        await inside.Task.WaitAsync(Patience);
        await Eventually(() => Sender.AskedAbout(gid) >= 1);
        await Task.Delay(TimeSpan.FromMilliseconds(200));
        Sender.AnswersAbout(gid).ShouldBeEmpty(); // the question waits for the lock instead of guessing
        (await Client.GetAsync(gid)).ShouldNotBeNull().Status.ShouldBe("prepared");

        release.SetResult();
        var sent = await execute;

        sent.Status.ShouldBe(MessageSendStatus.Submitted);
        var view = await Client.WaitAsync(gid, Patience);
        view.IsCommitted().ShouldBeTrue(view.Status);
        Sender.AnswersAbout(gid).ShouldAllBe(status => status == 200);
        Sender.DeliveriesOf(gid).ShouldHaveSingleItem().OrderVisible.ShouldBeTrue();
    }
}

/// <summary>The sender's database is PostgreSQL (a throw-away cluster for the class).</summary>
public sealed class PostgreSqlMessageSenderTests(TreatyFixture treaty, PostgresFixture postgres)
    : MessageSenderTests(treaty), IClassFixture<TreatyFixture>, IClassFixture<PostgresFixture>
{
    protected override async Task<SenderDatabase> CreateDatabaseAsync() => await PostgreSqlSenderDatabase.CreateAsync(postgres.Server);
}
