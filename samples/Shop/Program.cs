Console.WriteLine("shop");
