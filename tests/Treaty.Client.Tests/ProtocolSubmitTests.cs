using Treaty.Client.Tests.Support;
using Treaty.Core.Contracts;

namespace Treaty.Client.Tests;

/// <summary>TCC, 2PC, 3PC and the message's submit through a real coordinator and a real participant, over HTTP.</summary>
public sealed class ProtocolSubmitTests(TreatyFixture fixture) : IClassFixture<TreatyFixture>
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    private readonly TreatyClient _client = fixture.Client;
    private readonly TinyParticipant _participant = fixture.Participant;

    private static string NewGid(string prefix) => TreatyFixture.NewGid(prefix);

    [Fact]
    public async Task Tcc_EveryTryAnswers200_CommitsAndConfirmsEveryBranchAfterAllTries()
    {
        var gid = NewGid("tcc-ok");
        var ok = _participant.Ok;

        var view = await _client.Tcc(gid)
            .Branch("wallet", ok, ok, ok)
            .Branch("stock", new Uri(ok), new Uri(ok), new Uri(ok))
            .SubmitAsync(Wait);

        view.Protocol.ShouldBe("tcc");
        view.IsCommitted().ShouldBeTrue(view.Status);
        view.Decision.ShouldBe("commit");
        var calls = _participant.CallsOf(gid);
        calls.Select(c => (c.Branch, c.Op)).ShouldBe(
            [("wallet", "try"), ("stock", "try"), ("wallet", "confirm"), ("stock", "confirm")], ignoreOrder: true);
        // Confirms only after every try answered.
        calls.Take(2).ShouldAllBe(c => c.Op == "try");
        calls.ShouldNotContain(c => c.Op == "cancel");
    }

    [Fact]
    public async Task Tcc_ATryAnswers409_EndsAbortedAndCancelsOnlyTheReservedBranch()
    {
        var gid = NewGid("tcc-no");
        var ok = _participant.Ok;

        var view = await _client.Tcc(gid)
            .Branch("wallet", ok, ok, ok)
            .Branch("stock", _participant.Conflict, ok, ok)
            .SubmitAsync(Wait);

        view.IsAborted().ShouldBeTrue(view.Status);
        view.Decision.ShouldBe("abort");
        view.Branches.Single(b => b.Name == "stock").Ops["try"].LastStatusCode.ShouldBe(409);
        _participant.CallsOf(gid, "stock", "try").ShouldBe(1); // definitive: not retried
        _participant.CallsOf(gid, "wallet", "cancel").ShouldBe(1);
        _participant.CallsOf(gid, "stock", "cancel").ShouldBe(0); // it reserved nothing
        _participant.CallsOf(gid).ShouldNotContain(c => c.Op == "confirm");
    }

    [Fact]
    public async Task TwoPhaseCommit_EveryPrepareAnswers200_CommitsEveryBranchWithAYesVote()
    {
        var gid = NewGid("2pc-ok");
        var ok = _participant.Ok;

        var view = await _client.TwoPhaseCommit(gid)
            .Branch("debit", ok, ok, ok)
            .Branch("credit", ok, ok, ok)
            .SubmitAsync(Wait);

        view.Protocol.ShouldBe("2pc");
        view.IsCommitted().ShouldBeTrue(view.Status);
        view.Branches.ShouldAllBe(b => b.Vote == "yes");
        foreach (var branch in new[] { "debit", "credit" })
        {
            _participant.CallsOf(gid, branch, "prepare").ShouldBe(1);
            _participant.CallsOf(gid, branch, "commit").ShouldBe(1);
        }

        _participant.CallsOf(gid).ShouldNotContain(c => c.Op == "rollback");
    }

    [Fact]
    public async Task TwoPhaseCommit_APrepareAnswers409_EndsAbortedWithANoVoteAndNoCommit()
    {
        var gid = NewGid("2pc-no");
        var ok = _participant.Ok;

        var view = await _client.TwoPhaseCommit(gid)
            .Branch("debit", ok, ok, ok)
            .Branch("credit", _participant.Conflict, ok, ok)
            .SubmitAsync(Wait);

        view.IsAborted().ShouldBeTrue(view.Status);
        view.Decision.ShouldBe("abort");
        view.Branches.Single(b => b.Name == "credit").Vote.ShouldBe("no");
        _participant.CallsOf(gid, "debit", "rollback").ShouldBe(1);
        _participant.CallsOf(gid).ShouldNotContain(c => c.Op == "commit");
    }

    [Fact]
    public async Task ThreePhaseCommit_EveryCanCommitAnswers200_PreCommitsThenDoCommitsEveryBranch()
    {
        var gid = NewGid("3pc-ok");
        var ok = _participant.Ok;

        var view = await _client.ThreePhaseCommit(gid)
            .Branch("debit", ok, ok, ok, ok)
            .Branch("credit", ok, ok, ok, ok)
            .SubmitAsync(Wait);

        view.Protocol.ShouldBe("3pc");
        view.IsCommitted().ShouldBeTrue(view.Status);
        var ops = _participant.CallsOf(gid).Select(c => c.Op).ToList();
        ops.Count(o => o == "canCommit").ShouldBe(2);
        ops.Count(o => o == "preCommit").ShouldBe(2);
        ops.Count(o => o == "doCommit").ShouldBe(2);
        ops.ShouldNotContain("abort");
        // Phase by phase: every vote before any preCommit, every preCommit before any doCommit.
        ops.LastIndexOf("canCommit").ShouldBeLessThan(ops.IndexOf("preCommit"));
        ops.LastIndexOf("preCommit").ShouldBeLessThan(ops.IndexOf("doCommit"));
    }

    [Fact]
    public async Task ThreePhaseCommit_ACanCommitAnswers409_EndsAbortedWithoutPreCommit()
    {
        var gid = NewGid("3pc-no");
        var ok = _participant.Ok;

        var view = await _client.ThreePhaseCommit(gid)
            .Branch("debit", ok, ok, ok, ok)
            .Branch("credit", _participant.Conflict, ok, ok, ok)
            .SubmitAsync(Wait);

        view.IsAborted().ShouldBeTrue(view.Status);
        view.Branches.Single(b => b.Name == "credit").Vote.ShouldBe("no");
        _participant.CallsOf(gid).ShouldNotContain(c => c.Op == "preCommit" || c.Op == "doCommit");
    }

    [Fact]
    public async Task Message_RegisteredThenSubmitted_IsDeliveredOnceToEveryBranch()
    {
        var gid = NewGid("msg-ok");

        var registered = await _client.Message(gid)
            .WithQueryPrepared(_participant.Conflict) // never asked: the submit comes first
            .Branch("billing", _participant.Ok)
            .Branch("shipping", _participant.Ok, dependsOn: ["billing"])
            .WithTimeout(TimeSpan.FromMinutes(1))
            .SubmitAsync();

        registered.Status.ShouldBe("prepared");
        _participant.CallsOf(gid).ShouldBeEmpty();

        var view = await _client.SubmitPreparedAsync(gid, Wait);

        view.IsCommitted().ShouldBeTrue(view.Status);
        _participant.CallsOf(gid).Select(c => c.Branch).ShouldBe(["billing", "shipping"]); // dependsOn orders delivery
        _participant.CallsOf(gid).ShouldNotContain(c => c.Op == "queryPrepared");
        (await _client.SubmitPreparedAsync(gid)).IsCommitted().ShouldBeTrue(); // a repeated submit is harmless
        _participant.CallsOf(gid).Count.ShouldBe(2);
    }

    [Fact]
    public async Task SubmitPreparedAsync_OnAMessageAbortedByQueryPrepared_Throws409()
    {
        var gid = NewGid("msg-aborted");
        await _client.Message(gid)
            .WithQueryPrepared(_participant.Conflict) // the sender says: rolled back
            .Branch("billing", _participant.Ok)
            .WithTimeout(TimeSpan.FromMilliseconds(300))
            .SubmitAsync();
        var aborted = await _client.WaitAsync(gid, Wait);
        aborted.IsAborted().ShouldBeTrue(aborted.Status);

        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.SubmitPreparedAsync(gid));

        ex.StatusCode.ShouldBe(409);
        ex.Type.ShouldBe(ProblemTypes.InvalidState);
        ex.IsTransient.ShouldBeFalse();
        _participant.CallsOf(gid, "billing", "action").ShouldBe(0);
    }

    [Fact]
    public async Task SubmitPreparedAsync_OnASaga_Throws409AndOnAnUnknownGid404()
    {
        var saga = NewGid("not-msg");
        await _client.Saga(saga).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(Wait);

        (await Should.ThrowAsync<TreatyApiException>(() => _client.SubmitPreparedAsync(saga))).StatusCode.ShouldBe(409);
        (await Should.ThrowAsync<TreatyApiException>(() => _client.SubmitPreparedAsync(NewGid("unknown")))).StatusCode.ShouldBe(404);
    }

    [Fact]
    public async Task Message_WithoutQueryPrepared_Throws400NamingTheField()
    {
        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.Message(NewGid("msg-noq")).Branch("a", _participant.Ok).SubmitAsync());

        ex.StatusCode.ShouldBe(400);
        ex.Errors.ShouldNotBeNull().Keys.ShouldContain("queryPrepared");
    }

    [Fact]
    public async Task Message_ExecuteAsyncOnAnUnsupportedDatabase_ThrowsBeforeRegistering()
    {
        var gid = NewGid("msg-unsupported");
        await using var connection = new UnsupportedConnection();

        await Should.ThrowAsync<NotSupportedException>(() => _client.Message(gid)
            .WithQueryPrepared(_participant.Ok).Branch("a", _participant.Ok)
            .ExecuteAsync(connection, (_, _) => Task.CompletedTask));
        await Should.ThrowAsync<NotSupportedException>(() => TreatyMessages.QueryPreparedAsync(connection, gid));

        (await _client.GetAsync(gid)).ShouldBeNull();
        connection.Opened.ShouldBeFalse();
    }

    [Fact]
    public async Task Tcc_WithDependsOnSentByHand_IsRefusedByTheCoordinator()
    {
        // The builder has no dependsOn for TCC; the rule is the coordinator's, and it holds.
        var request = new TccBuilder(NewGid("tcc-deps"))
            .Branch("a", _participant.Ok, _participant.Ok, _participant.Ok)
            .Branch("b", _participant.Ok, _participant.Ok, _participant.Ok)
            .Build();
        request.Branches![1]!.DependsOn = ["a"];

        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.SubmitAsync(request));

        ex.StatusCode.ShouldBe(400);
    }

    /// <summary>A database the marker table does not support; it records whether anyone opened it.</summary>
    private sealed class UnsupportedConnection : System.Data.Common.DbConnection
    {
        public bool Opened { get; private set; }

        [System.Diagnostics.CodeAnalysis.AllowNull]
        public override string ConnectionString { get; set; } = "";

        public override string Database => "db";

        public override string DataSource => "somewhere";

        public override string ServerVersion => "1";

        public override System.Data.ConnectionState State => System.Data.ConnectionState.Closed;

        public override void ChangeDatabase(string databaseName) => throw new NotSupportedException();

        public override void Close()
        {
        }

        public override void Open() => Opened = true;

        protected override System.Data.Common.DbTransaction BeginDbTransaction(System.Data.IsolationLevel isolationLevel) => throw new NotSupportedException();

        protected override System.Data.Common.DbCommand CreateDbCommand() => throw new NotSupportedException();
    }
}
