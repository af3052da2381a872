#include "daemon/engine/site.h"

#include "gtest/gtest.h"

namespace tprd::engine {
namespace {

TEST(SiteTest, FormNamesRoundTrip) {
  for (Form form : {Form::kMovEaxFromMoffs, Form::kMovMoffsFromEax, Form::kMovRegFromMem,
                    Form::kMovMemFromReg, Form::kMovMemFromImm, Form::kPushMem}) {
    auto back = FormFromName(FormName(form));
    ASSERT_TRUE(back.has_value()) << FormName(form);
    EXPECT_EQ(*back, form);
  }
  EXPECT_FALSE(FormFromName("cmp_mem").has_value());
}

TEST(SiteTest, WritersAreTheThreeStoreForms) {
  EXPECT_TRUE(FormWritesTpr(Form::kMovMoffsFromEax));
  EXPECT_TRUE(FormWritesTpr(Form::kMovMemFromReg));
  EXPECT_TRUE(FormWritesTpr(Form::kMovMemFromImm));
  EXPECT_FALSE(FormWritesTpr(Form::kMovEaxFromMoffs));
  EXPECT_FALSE(FormWritesTpr(Form::kMovRegFromMem));
  EXPECT_FALSE(FormWritesTpr(Form::kPushMem));
}

TEST(SiteTest, RegisterNamesAreLowerCase) {
  EXPECT_EQ(GprName(Gpr::kEax), "eax");
  EXPECT_EQ(GprName(Gpr::kEdi), "edi");
}

}  // namespace
}  // namespace tprd::engine
