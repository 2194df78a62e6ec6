using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Core.Tests.Contracts;

/// <summary>The parser asks each protocol's machine for its operations, its dependsOn default and its own URLs.</summary>
public sealed class ProtocolRequestParserTests
{
    private static readonly IProtocolMachine[] Machines =
        [new SagaMachine(), new TccMachine(), new TwoPhaseCommitMachine(), new ThreePhaseCommitMachine(), new MessageMachine()];

    private static ParsedRequest Parse(SubmitTransactionRequest request) =>
        RequestParser.Parse(request, p => Machines.FirstOrDefault(m => m.Protocol == p), () => "generated-gid");

    private static SubmitTransactionRequest Tcc(Action<BranchRequest>? change = null)
    {
        var second = new BranchRequest { Name = "stock", Try = "http://s.test/try", Confirm = "http://s.test/confirm", Cancel = "http://s.test/cancel" };
        change?.Invoke(second);
        return new SubmitTransactionRequest
        {
            Gid = "tcc-1",
            Protocol = "tcc",
            Branches =
            [
                new BranchRequest { Name = "payment", Try = "http://p.test/try", Confirm = "http://p.test/confirm", Cancel = "http://p.test/cancel" },
                second,
            ],
        };
    }

    [Fact]
    public void Parse_Tcc_BranchesRunAtOnce()
    {
        var parsed = Parse(Tcc());

        var spec = parsed.Spec.ShouldNotBeNull();
        spec.Protocol.ShouldBe(Protocol.Tcc);
        spec.Branches.ShouldAllBe(b => b.DependsOn.IsEmpty);
        spec.Branches[1].UrlOf("cancel").ShouldBe("http://s.test/cancel");
    }

    [Fact]
    public void Parse_TccWithDependsOn_IsRefusedNamingTheField() =>
        Parse(Tcc(b => b.DependsOn = ["payment"])).Errors.ShouldContain(e => e.Field == "branches[1].dependsOn");

    [Fact]
    public void Parse_TccWithoutCancel_NamesTheMissingOperation() =>
        Parse(Tcc(b => b.Cancel = null)).Errors.ShouldContain(e => e.Field == "branches[1].cancel");

    [Fact]
    public void Parse_TccWithASagaOperation_NamesIt() =>
        Parse(Tcc(b => b.Action = "http://s.test/action")).Errors.ShouldContain(e => e.Field == "branches[1].action" && e.Message.Contains("try, confirm, cancel"));

    [Fact]
    public void Parse_PivotOutsideASaga_IsRefused() =>
        Parse(Tcc(b => b.Pivot = true)).Errors.ShouldContain(e => e.Field == "branches[1].pivot");

    [Fact]
    public void Parse_ThreePhase_NeedsEveryOperation()
    {
        var request = new SubmitTransactionRequest
        {
            Protocol = "3pc",
            Branches = [new BranchRequest { Name = "a", CanCommit = "http://a.test/can", PreCommit = "http://a.test/pre", DoCommit = "http://a.test/do" }],
        };

        Parse(request).Errors.ShouldHaveSingleItem().Field.ShouldBe("branches[0].abort");
    }

    [Fact]
    public void Parse_Message_NeedsQueryPrepared_AndDefaultsToNoDependency()
    {
        var request = new SubmitTransactionRequest
        {
            Protocol = "msg",
            Branches = [new BranchRequest { Name = "points", Action = "http://p.test/add" }, new BranchRequest { Name = "mail", Action = "http://m.test/send" }],
        };
        Parse(request).Errors.ShouldHaveSingleItem().Field.ShouldBe("queryPrepared");

        request.QueryPrepared = "http://sender.test/query";
        var spec = Parse(request).Spec.ShouldNotBeNull();

        spec.UrlOf("queryPrepared").ShouldBe("http://sender.test/query");
        spec.Branches.ShouldAllBe(b => b.DependsOn.IsEmpty);
    }

    [Fact]
    public void Parse_QueryPreparedOnASaga_IsRefused()
    {
        var request = new SubmitTransactionRequest
        {
            Protocol = "saga",
            QueryPrepared = "http://sender.test/query",
            Branches = [new BranchRequest { Name = "a", Action = "http://a.test/do", Compensate = "http://a.test/undo" }],
        };

        Parse(request).Errors.ShouldHaveSingleItem().Field.ShouldBe("queryPrepared");
    }

    [Fact]
    public void Parse_QueryPreparedNotAUrl_IsRefused()
    {
        var request = new SubmitTransactionRequest
        {
            Protocol = "msg",
            QueryPrepared = "ftp://sender.test/query",
            Branches = [new BranchRequest { Name = "a", Action = "http://a.test/do" }],
        };

        Parse(request).Errors.ShouldContain(e => e.Field == "queryPrepared" && e.Message.Contains("http"));
    }
}
