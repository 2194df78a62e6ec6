using Treaty.Core.Protocols;
using static Treaty.Core.Tests.Support.SagaSpecs;

namespace Treaty.Core.Tests.Sagas;

public sealed class SagaValidationTests
{
    private readonly SagaMachine _machine = new();

    [Fact]
    public void Validate_SequentialSagaWithCompensations_HasNoErrors() =>
        _machine.Validate(Sequential("order", "payment", "stock")).ShouldBeEmpty();

    [Fact]
    public void Validate_BranchWithoutCompensate_NamesTheCompensateField()
    {
        var errors = _machine.Validate(Saga([Branch("order"), Branch("payment", ["order"], compensate: false)])).ToList();

        errors.ShouldHaveSingleItem().Field.ShouldBe("branches[1].compensate");
    }

    [Fact]
    public void Validate_BranchWithoutAction_NamesTheActionField()
    {
        var noAction = Branch("order") with { Urls = Branch("order").Urls.Remove("action") };

        var errors = _machine.Validate(Saga([noAction])).ToList();

        errors.ShouldContain(e => e.Field == "branches[0].action");
    }

    [Fact]
    public void Validate_BranchesAtOrAfterThePivot_NeedNoCompensate() =>
        _machine.Validate(Saga([
            Branch("payment"),
            Branch("charge", ["payment"], pivot: true, compensate: false),
            Branch("ship", ["charge"], compensate: false),
            Branch("mail", ["ship"], compensate: false),
        ])).ShouldBeEmpty();

    [Fact]
    public void Validate_BranchBesideThePivot_IsRefused()
    {
        // payment -> charge (pivot); stock also depends only on payment: it runs beside the pivot.
        var errors = _machine.Validate(Saga([
            Branch("payment"),
            Branch("charge", ["payment"], pivot: true),
            Branch("stock", ["payment"]),
        ])).ToList();

        errors.ShouldHaveSingleItem().Field.ShouldBe("branches[2].dependsOn");
        errors[0].Message.ShouldContain("'stock'");
        errors[0].Message.ShouldContain("'charge'");
    }

    [Fact]
    public void Validate_TwoPivots_NamesTheSecond()
    {
        var errors = _machine.Validate(Saga([
            Branch("payment", pivot: true),
            Branch("charge", ["payment"], pivot: true),
        ])).ToList();

        errors.ShouldHaveSingleItem().Field.ShouldBe("branches[1].pivot");
    }

    [Fact]
    public void Validate_OperationOfAnotherProtocol_NamesIt()
    {
        var tcc = Branch("order") with { Urls = Branch("order").Urls.Add("confirm", "http://svc.test/confirm") };

        _machine.Validate(Saga([tcc])).ShouldContain(e => e.Field == "branches[0].confirm");
    }
}
